import numpy as np
import pytest

from covidxr.config import parse_overrides, with_overrides
from covidxr.data.preprocess import Cut, Preprocessing, find_cut, make_square, preprocess
from covidxr.errors import UsageError


def _body(height=300, width=260, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(90, 230, size=(height, width), dtype=np.uint8)


def _framed(top, bottom, left, right, value=0, body=None):
    body = _body() if body is None else body
    height, width = body.shape
    framed = np.full((height + top + bottom, width + left + right), value, dtype=np.uint8)
    framed[top:top + height, left:left + width] = body
    return framed


def test_black_borders_are_removed_exactly():
    image = _framed(20, 10, 15, 5)
    assert find_cut(image, Preprocessing()) == Cut(20, 10, 15, 5)


def test_border_lines_with_some_text_still_count_when_mostly_dark():
    image = _framed(30, 0, 0, 0)
    image[5, :40] = 255
    assert find_cut(image, Preprocessing()).top == 30


def test_dark_lines_inside_the_body_are_never_cut():
    body = _body()
    body[100:140] = 5
    image = _framed(12, 0, 0, 0, body=body)
    assert find_cut(image, Preprocessing()) == Cut(12, 0, 0, 0)


def test_a_mostly_dark_image_is_not_cut_below_the_floor():
    image = np.full((200, 200), 10, dtype=np.uint8)
    image[150:160, 20:180] = 200
    assert find_cut(image, Preprocessing()) == Cut(0, 0, 0, 0)
    assert find_cut(image, Preprocessing(min_kept=0.01)).top == 150


def test_white_and_uniform_borders_only_when_configured():
    white = _framed(8, 8, 0, 0, value=250)
    assert find_cut(white, Preprocessing()) == Cut(0, 0, 0, 0)
    assert find_cut(white, Preprocessing(borders=("white",))) == Cut(8, 8, 0, 0)
    grey = _framed(0, 0, 6, 9, value=128)
    assert find_cut(grey, Preprocessing(borders=("black", "uniform"))) == Cut(0, 0, 6, 9)
    assert find_cut(_framed(4, 0, 0, 0), Preprocessing(borders=())) == Cut(0, 0, 0, 0)


def test_square_crop_and_pad():
    image = _body(300, 200)
    cropped = make_square(image, "crop")
    assert cropped.shape == (200, 200) and np.array_equal(cropped, image[50:250])
    padded = make_square(image, "pad")
    assert padded.shape == (300, 300) and padded[:, :50].max() == 0 and np.array_equal(padded[:, 50:250], image)


def test_preprocess_output_size_crop_top_and_clahe():
    image = _framed(20, 0, 10, 0, body=_body(400, 300))
    out, cut = preprocess(image, Preprocessing(size=64))
    assert out.shape == (64, 64) and out.dtype == np.uint8 and cut == Cut(20, 0, 10, 0)
    low_contrast = np.random.default_rng(1).integers(120, 136, size=(128, 128), dtype=np.uint8)
    flat, _ = preprocess(low_contrast, Preprocessing(size=128, borders=()))
    equalised, _ = preprocess(low_contrast, Preprocessing(size=128, borders=(), clahe=True))
    assert equalised.std() > flat.std() * 1.5
    marked = _body(200, 200)
    marked[:20] = 255
    topless, _ = preprocess(marked, Preprocessing(size=200, borders=(), crop_top=0.1, square="pad"))
    assert topless[:20].max() < 255
    with pytest.raises(UsageError, match=r"^image: shape \(4, 4, 3\) dtype uint8: expected a 2-D uint8"):
        preprocess(np.zeros((4, 4, 3), np.uint8), Preprocessing())


def test_small_images_are_upsampled():
    out, _ = preprocess(_body(32, 32), Preprocessing(size=64, borders=()))
    assert out.shape == (64, 64)


def test_cache_key_follows_every_setting():
    assert Preprocessing().key() == Preprocessing().key()
    assert Preprocessing().key() != Preprocessing(clahe=True).key()
    assert Preprocessing(size=128).key().startswith("128px-")


def test_overrides_validate_and_list_valid_keys():
    config = with_overrides(Preprocessing(), parse_overrides(["borders=black,white", "clahe=true", "size=128"]))
    assert config.borders == ("black", "white") and config.clahe and config.size == 128
    assert with_overrides(Preprocessing(), parse_overrides(["borders=none"])).borders == ()
    with pytest.raises(UsageError, match="valid: size, borders"):
        with_overrides(Preprocessing(), parse_overrides(["colour=red"]))
    with pytest.raises(UsageError, match="square"):
        with_overrides(Preprocessing(), parse_overrides(["square=stretch"]))
    with pytest.raises(UsageError, match="expected key=value"):
        parse_overrides(["clahe"])


@pytest.mark.parametrize("shape", [(700, 650), (90, 2000), (2000, 90)])
def test_blockwise_std_equals_the_whole_image_computation(shape):
    from covidxr.data.preprocess import blockwise_std

    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    image[:, :20] = 7
    for axis in (0, 1):
        assert np.array_equal(blockwise_std(image, axis, block_pixels=5_000), image.astype(np.float32).std(axis=axis))
