import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_muse_core_is_light():
    loaded = _modules_after("import muse_core")
    assert not {"torch", "transformers", "diffusers"} & loaded


def test_engine_modules_do_not_import_heavy_or_forbidden_packages():
    loaded = _modules_after("import muse_core.pipeline, muse_core.models.vq, muse_core.models.super_res")
    assert "torch" in loaded
    assert not {"transformers", "diffusers", "torchvision", "comfy", "folder_paths"} & loaded


def test_no_torchvision_or_pickle_loading_in_the_code():
    for path in (ROOT / "muse_core").rglob("*.py"):
        text = path.read_text()
        assert "torchvision" not in text, path
        unsafe = [line for line in text.splitlines() if "torch.load(" in line and "weights_only=True" not in line]
        assert not unsafe, path
