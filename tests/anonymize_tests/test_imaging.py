import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from anonymize import ImageError, decode_image, encode_png, from_model_output, make_generator, to_model_input


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its pixel data is never reached."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def png_chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        types.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return types


# Decoding


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge ends up on top
    img = decode_image(save(stored, "JPEG", exif=exif, quality=95))
    assert img.mode == "RGB" and img.size == (20, 40)
    top, bottom = np.asarray(img)[5, 10], np.asarray(img)[35, 10]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_cmyk_jpeg_becomes_rgb():
    img = decode_image(save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert img.mode == "RGB"
    np.testing.assert_allclose(np.asarray(img)[8, 8], (255, 0, 0), atol=6)


@pytest.mark.parametrize(("value16", "value8"), [(65535, 255), (0, 0), (32896, 128)])
def test_16_bit_grey_is_scaled_to_8_bits(value16, value8):
    img16 = Image.fromarray(np.full((12, 12), value16, dtype=np.uint16))
    img = decode_image(save(img16, "PNG"))
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[3, 3]) == (value8,) * 3


def test_float_grey_in_unit_range():
    img = decode_image(save(Image.fromarray(np.full((9, 9), 0.5, dtype=np.float32)), "TIFF"))
    assert tuple(np.asarray(img)[0, 0]) == (128, 128, 128)


def test_rgba_is_composited_on_white():
    pixels = np.zeros((10, 10, 4), np.uint8)
    pixels[:, :5] = (255, 0, 0, 0)  # fully transparent red: white
    pixels[:, 5:] = (0, 0, 255, 255)  # opaque blue
    pixels[0, 9] = (0, 0, 0, 128)  # half transparent black: mid grey
    img = np.asarray(decode_image(save(Image.fromarray(pixels, "RGBA"), "PNG")))
    assert tuple(img[5, 2]) == (255, 255, 255)
    assert tuple(img[5, 7]) == (0, 0, 255)
    assert all(abs(int(c) - 127) <= 1 for c in img[0, 9])


def test_la_is_composited_on_white():
    img = Image.new("LA", (8, 8), (0, 0))
    assert tuple(np.asarray(decode_image(save(img, "PNG")))[4, 4]) == (255, 255, 255)


def test_palette_with_transparency():
    pal = Image.new("P", (10, 10), 0)
    pal.putpalette([0, 255, 0] + [255, 0, 0] * 255)
    pal.paste(1, (0, 0, 5, 10))
    for fmt in ("PNG", "GIF"):
        img = np.asarray(decode_image(save(pal, fmt, transparency=0)))
        assert tuple(img[5, 2]) == (255, 0, 0), fmt  # index 1: opaque red
        assert tuple(img[5, 7]) == (255, 255, 255), fmt  # index 0: transparent, was green


def test_grey_and_bilevel_become_rgb():
    assert tuple(np.asarray(decode_image(save(Image.new("L", (8, 8), 77), "PNG")))[0, 0]) == (77, 77, 77)
    assert tuple(np.asarray(decode_image(save(Image.new("1", (8, 8), 1), "PNG")))[0, 0]) == (255, 255, 255)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert tuple(np.asarray(decode_image(data))[5, 5]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "image is empty (0 bytes)"),
        (b"hello, I am not an image\n", "not an image (format not recognised)"),
    ],
)
def test_non_images_are_rejected(data, message):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert str(info.value) == message


def test_truncated_jpeg_is_rejected(random_image):
    data = save(random_image(64, 64), "JPEG")
    with pytest.raises(ImageError, match=r"^image is truncated or corrupt: ") as info:
        decode_image(data[: len(data) // 2])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("w", "h"), [(1, 1), (7, 100), (100, 7)])
def test_tiny_images_are_rejected(w, h):
    with pytest.raises(ImageError) as info:
        decode_image(save(Image.new("RGB", (w, h)), "PNG"))
    assert str(info.value) == f"image is {w}x{h}; at least 8x8 pixels are needed"


def test_too_many_pixels_are_rejected_from_the_header():
    with pytest.raises(ImageError) as info:
        decode_image(png_header_only(8000, 8000))  # 64 Mpx > 50 Mpx default; pixels never decoded
    assert str(info.value) == "image is 8000x8000, more than the limit of 50000000 pixels"
    with pytest.raises(ImageError, match="more than the limit of 1000 pixels"):
        decode_image(save(Image.new("RGB", (40, 40)), "PNG"), max_pixels=1000)


def test_pillow_decompression_bomb_becomes_image_error():
    with pytest.raises(ImageError, match="too large to decode safely"):
        decode_image(png_header_only(30000, 30000), max_pixels=10**12)


# Size rule


@pytest.mark.parametrize(("w", "h"), [(250, 250), (317, 411), (40, 9), (9, 40), (64, 64), (1000, 12)])
def test_placement_round_trip_restores_exact_size(random_image, w, h):
    square, placement = to_model_input(random_image(w, h), 64)
    assert square.size == (64, 64) and square.mode == "RGB"
    assert from_model_output(square, placement).size == (w, h)


def test_padding_reflects_the_image_symmetrically(random_image):
    square, p = to_model_input(random_image(40, 9), 64)
    assert (p.scaled_width, p.scaled_height) == (64, 14)
    assert (p.left, p.top) == (0, 25)
    px = np.asarray(square).astype(int)
    np.testing.assert_array_equal(px[24], px[26])  # mirrored about the first image row
    np.testing.assert_array_equal(px[25 + 14], px[25 + 12])  # and about the last


def test_padding_only_round_trip_is_lossless(random_image):
    img = random_image(64, 40)
    square, placement = to_model_input(img, 64)
    assert np.array_equal(np.asarray(from_model_output(square, placement)), np.asarray(img))


def test_from_model_output_checks_the_size(random_image):
    _, placement = to_model_input(random_image(30, 20), 64)
    with pytest.raises(ValueError, match="expected a 64x64 model output, got 32x32"):
        from_model_output(random_image(32, 32), placement)


@pytest.mark.parametrize(("w", "h"), [(250, 250), (317, 411), (40, 9)])
def test_sampler_output_has_the_input_size(sampler_for, random_image, w, h):
    sampler, _ = sampler_for("latent", scheduler="ddim")
    square, placement = to_model_input(random_image(w, h), sampler.model.resolution)
    out = sampler([square], 0.3, [make_generator(0)])
    assert from_model_output(out.images[0], placement).size == (w, h)


# Encoding


def test_png_has_no_metadata(random_image):
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "someone")
    source = Image.open(io.BytesIO(save(random_image(16, 16), "PNG", pnginfo=text, dpi=(300, 300))))
    source.load()
    source.info["icc_profile"] = b"x" * 200
    source.info["exif"] = b"Exif\x00\x00secret"
    assert "Author" in source.info
    img = source
    data = encode_png(img)
    assert png_chunk_types(data) == [b"IHDR", b"IDAT", b"IEND"]
    back = Image.open(io.BytesIO(data))
    assert back.size == (16, 16) and back.mode == "RGB" and not back.info
    assert np.array_equal(np.asarray(back), np.asarray(img))


def test_png_is_deterministic(random_image):
    assert encode_png(random_image(20, 30)) == encode_png(random_image(20, 30))
