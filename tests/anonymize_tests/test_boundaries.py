import anonymize


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
