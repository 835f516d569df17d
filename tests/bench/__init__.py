"""Tests of //bench."""
