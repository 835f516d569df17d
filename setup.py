"""Packages the project's code for remote Beam workers (Dataflow, Flink,
Spark, a remote Dask cluster): pass `--setup_file=<repo>/setup.py` to
ExampleGen and Beam builds an sdist of these packages and installs it on
every worker. Dependencies come from the worker image or
`--requirements_file=requirements_lock.txt`; the project itself is built and
tested with Bazel (see README.md), not with this file.
"""

import setuptools

setuptools.setup(
    name="coatnet-pipeline",
    version="0.1.0",
    packages=setuptools.find_packages(
        include=[
            "coatnet_tf*",
            "components*",
            "configs*",
            "pipeline*",
            "storage*",
        ]
    ),
    python_requires=">=3.11,<3.12",
)
