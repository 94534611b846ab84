from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def _version() -> str:
    for line in (ROOT / "fused_se" / "version.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("fused_se/version.py has no __version__")


setup(
    name="fused_se",
    version=_version(),
    description="Fused Triton kernels for Squeeze-and-Excitation blocks in PyTorch",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    author="the fused_se authors",
    license="BSD-3-Clause",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    # kernels/ is a top-level folder in the repository but must never become a top-level
    # import name (PyPI has an unrelated package called `kernels`): it installs as fused_se.kernels.
    packages=["fused_se", "fused_se.bench", "fused_se.kernels", "fused_se.perf", "fused_se.runtime"],
    package_dir={"fused_se": "fused_se", "fused_se.kernels": "kernels"},
    # torch: the floor is the oldest torch CI tests (.ci/run's second stage), with the triton it brings.
    # numpy: the Triton interpreter, which runs the kernels on machines without a GPU, needs it; with
    # a triton before 3.7, numpy < 2.4, which a requirement cannot say (fused_se/_requirements.py
    # checks the pair when the interpreter is on).
    install_requires=["torch>=2.11", "triton>=3.6", "numpy"],
    # timm, torchvision, monai, transformers and speechbrain: the tests convert real models of each
    # (built with random weights, nothing downloaded); speechbrain brings torchaudio, whose releases
    # since 2.11 take any torch >= 2.11, so neither moves CI's torch.
    # matplotlib: the tests write fused-se-bench's plot; hypothesis: the property-based tests.
    # bench: fused-se-bench's --plot (matplotlib) and --e2e (timm), and the pytest-benchmark suite.
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis",
            "timm",
            "torchvision",
            "monai",
            "transformers",
            "speechbrain",
            "segmentation-models-pytorch",
            "matplotlib",
            "onnx",
            "onnxscript",
            "onnxruntime",
        ],
        "bench": ["matplotlib", "timm", "pytest-benchmark"],
    },
    entry_points={
        "console_scripts": ["fused-se-bench = fused_se.bench:main", "fused-se-demo = fused_se.demo:main"],
    },
    classifiers=[
        "License :: OSI Approved :: BSD License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
