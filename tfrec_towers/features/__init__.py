"""Declarative feature spec: the single source of parse specs, Keras inputs, encoders and signatures."""
from tfrec_towers.features.spec import (  # noqa: F401
    CategoricalFeature,
    Feature,
    FeatureSpec,
    IdFeature,
    NumericFeature,
    SequenceFeature,
    TextFeature,
    TimestampFeature,
)

__all__ = ["CategoricalFeature", "Feature", "FeatureSpec", "IdFeature", "NumericFeature", "SequenceFeature",
           "TextFeature", "TimestampFeature"]
