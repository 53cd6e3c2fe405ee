"""The wheel's packages: dfseg's own, and the repository's ``bundles/`` folder installed as ``dfseg/bundles``
(pyproject.toml maps the folder and lists its files as package data; everything else lives there)."""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["dfseg", "dfseg.*"]), "dfseg.bundles"])
