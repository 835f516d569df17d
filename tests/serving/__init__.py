"""Tests of the Evaluator, Exporter, Pusher and the serving client."""
