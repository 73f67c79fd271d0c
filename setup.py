"""Installs `prompt_tuning` (library and entry points) and `tasks` (seqio tasks)."""

import setuptools

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "seqio==0.0.20",
    "tensorflow-cpu==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "sentencepiece==0.2.3",
    "gin-config==0.5.0",
    "clu==0.0.12",
    "tensorboard==2.21.0",
    "numpy>=2.0",
    "ml_dtypes==0.6.0",
    "msgpack==1.2.4",
    "tensorstore==0.1.86",
    "safetensors",
    "matplotlib",
]

setuptools.setup(
    name="prompt_tuning",
    version="0.1.0",
    description="Soft prompt tuning of a frozen T5 in JAX/Flax, with T5X conventions.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(
        include=["prompt_tuning", "prompt_tuning.*", "tasks", "tasks.*", "gin_configs*"]
    ),
    package_data={
        # The embedded tiny pretrained T5 (checkpoint, vocabulary, card) ships with the package,
        # and so do the gin files (found on gin's search path from any working directory).
        "prompt_tuning.pretrained": ["t5_tiny/*", "t5_tiny/*/*", "t5_tiny/*/*/*"],
        **{
            f"gin_configs.{kind}": ["*.gin"]
            for kind in ("models", "prompts", "runs", "t5x.models", "t5x.runs")
        },
    },
    install_requires=CORE,
    extras_require={
        # torch is only a numerical reference; install torch==2.13.0 first (CPU build).
        "test": [
            "pytest",
            "pytest-xdist",
            "ruff",
            "torch==2.13.0",
            "transformers>=4.57,<4.58",
            "scipy",
            "scikit-learn",
            "peft==0.17.1",  # the PEFT adapter tests (prompt_tuning.export)
        ],
        "bench": ["peft"],
        # pt-serve: the HTTP server (FastAPI on uvicorn with its C HTTP parser and event loop,
        # Prometheus metrics).
        "serve": [
            "fastapi==0.163.2",
            "uvicorn==0.54.0",
            "httptools==0.9.0",
            "uvloop==0.23.0",
            "prometheus-client==0.26.0",
        ],
        "gpu": ["jax[cuda12]==0.10.2"],
        "tpu": ["jax[tpu]==0.10.2"],
    },
    entry_points={
        "console_scripts": [
            "pt-train=prompt_tuning.train.__main__:console_main",
            "pt-eval=prompt_tuning.eval:console_main",
            "pt-infer=prompt_tuning.infer:console_main",
            "pt-serve=prompt_tuning.serve.__main__:console_main",
            "pt-export=prompt_tuning.export.__main__:console_main",
        ]
    },
)
