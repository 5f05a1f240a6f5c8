"""covidxr: build, honestly evaluate, explain and serve chest X-ray classifiers.

Research and teaching software; not for clinical use.
"""

__version__ = "0.1.0"


def load_model(run=None):
    """`covidxr.load_model(run).predict(path_or_array)`: see covidxr.predict.Predictor."""
    from covidxr.predict import load_model as load

    return load(run)
