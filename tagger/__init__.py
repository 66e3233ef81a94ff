"""Swatch's model side: taxonomy, data, model, training, evaluation and the batch predictor.

``tagger`` never imports ``streams``; the stream uses it through the predictor and the model card.
"""
