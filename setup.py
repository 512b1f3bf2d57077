"""Builds roxxel's one optional C extension, ``roxxel._cviews`` (everything else is in
pyproject.toml). ``optional=True``: where no C compiler is at hand the install still
succeeds, and roxxel runs its pure-Python twin of the module (roxxel/read/views.py)."""

from setuptools import Extension, setup

try:
    import numpy  # a build requirement; absent only in a build without isolation
except ImportError:
    print("roxxel: numpy is not installed in the build environment; skipping roxxel._cviews")
    extensions = []
else:
    extensions = [
        Extension(
            "roxxel._cviews",
            sources=["roxxel/_cviews.c"],
            include_dirs=[numpy.get_include()],
            optional=True,
        )
    ]

setup(ext_modules=extensions)
