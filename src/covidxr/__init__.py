"""covidxr: build, honestly evaluate, explain and serve chest X-ray classifiers.

Research and teaching software; not for clinical use.
"""

__version__ = "0.1.0"
