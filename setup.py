"""Builds roxxel's one optional C extension, ``roxxel._cviews`` (everything else is in
pyproject.toml). ``optional=True``: where no C compiler is at hand the install still
succeeds, and roxxel runs its pure-Python twin of the module (roxxel/views.py)."""

import numpy
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "roxxel._cviews",
            sources=["roxxel/_cviews.c"],
            include_dirs=[numpy.get_include()],
            optional=True,
        )
    ]
)
