"""Crash-safe small files on local disk and object stores."""
