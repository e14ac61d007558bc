import ast
from pathlib import Path

import anonymize


def test_anonymize_never_imports_pipeline_or_evaluation():
    package = Path(anonymize.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("pipeline", "evaluation"), f"{source.name} imports {name}"


def test_public_names():
    assert set(anonymize.__all__) >= {
        "SamplerSettings",
        "validate_level",
        "load_model",
        "LoadedModel",
        "WeightsNotFound",
        "BoomerangSampler",
        "BoomerangOutput",
        "output_seed",
        "make_generator",
        "decode_image",
        "ImageError",
        "to_model_input",
        "from_model_output",
        "encode_png",
        "build_tiny_latent_pipeline",
        "build_tiny_pixel_ddpm",
    }
    assert all(hasattr(anonymize, name) for name in anonymize.__all__)
