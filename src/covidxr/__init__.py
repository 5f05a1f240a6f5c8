"""covidxr: build, honestly evaluate, explain and serve chest X-ray classifiers.

Research and teaching software; not for clinical use.
"""

__version__ = "0.1.0"


def load_model(run=None, operating_point=None, prevalence=None, input_check=True):
    """`covidxr.load_model(run).predict(path_or_array)`: see covidxr.predict.load_model and Predictor."""
    from covidxr.predict import load_model as load

    return load(run, operating_point, prevalence, input_check)


def segment_lungs(image):
    """`covidxr.segment_lungs(array)`: the shipped segmenter's lung mask (uint8, the input's size, 255 on both
    lungs, 0 elsewhere): see covidxr.lungs.segment_lungs."""
    from covidxr.lungs import segment_lungs as segment

    return segment(image)
