"""tcc-eval: task-related visual token compression for MLLMs, as VLMEvalKit and lmms-eval plug-ins."""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Start-up hook that registers our models when vlmeval.config is imported (see autoregister.py).
PTH = Path("tcc_eval", "integrations", "vlmeval", "tcc_eval_vlmeval.pth")


class build_py_with_pth(build_py):
    """Also put the .pth at the top of site-packages: wheels (`pip install .`) take it from build_lib;
    PEP 660 editable wheels (`pip install -e .`) from the install dir (the editable wheel's root)."""

    def run(self):
        super().run()
        targets = [Path(self.build_lib)]
        if getattr(self, "editable_mode", False):
            targets.append(Path(self.get_finalized_command("install").install_lib))
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PTH, target / PTH.name)


setup(
    cmdclass={"build_py": build_py_with_pth},
    name="tcc-eval",
    version="0.1.0",
    description="Task-related visual token compression (input-stage pruning) for Qwen2-VL, LLaVA-OneVision "
    "and VILA1.5, plugged into VLMEvalKit and lmms-eval",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tcc_eval", "tcc_eval.*", "model_registry", "model_registry.*"]),
    include_package_data=True,
    package_data={"tcc_eval": ["assets/**/*", "lmms_tasks/**/*"], "model_registry": ["*.yaml"]},
    install_requires=[
        "torch>=2.4,<=2.14.1",
        "torchvision",
        # internals used for pruning (get_rope_index, `cache` kwarg, generate's position handling) move
        # between releases: widen only after the exactness tests pass on the new version
        "transformers>=5.24,<5.25",
        "ms-vlmeval==0.0.20",
        # ms-vlmeval downloads its video benchmarks (MVBench, Video-MME, ...) from ModelScope unless
        # VLMEVALKIT_USE_MODELSCOPE=0, and does not depend on modelscope itself: without it `--data MVBench` fails.
        # Its cache lookup (vlmeval.smp.get_cache_path) calls an API that modelscope 1.38 removed.
        "modelscope>=1.20,<1.38",
        "lmms-eval==0.7.3",
        "filelock<4",
        "decord",
        "pandas",
        "openpyxl",
        "matplotlib",
        "tokenizers",
        "pillow",
        "tqdm",
    ],
    extras_require={"test": ["pytest>=8"]},
    entry_points={
        "lmms_eval.models": [
            "qwen2_vl_tcc = tcc_eval.integrations.lmms_eval.manifests:qwen2_vl_tcc",
            "qwen2_5_vl_tcc = tcc_eval.integrations.lmms_eval.manifests:qwen2_5_vl_tcc",
            "llava_onevision_tcc = tcc_eval.integrations.lmms_eval.manifests:llava_onevision_tcc",
            "vila_tcc = tcc_eval.integrations.lmms_eval.manifests:vila_tcc",
        ],
    },
)
