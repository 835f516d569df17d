"""Tests of //configs."""
