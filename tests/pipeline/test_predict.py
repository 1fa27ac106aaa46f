"""Prediction: depth windows and their blending, the streamed way back, files and bad input."""

import shutil

import numpy as np
import pytest
import torch
from helpers import TINY_RUN, tiny_encoder, tiny_model_file

from sam3dseg.cli import main
from sam3dseg.data.preprocess import PreprocessConfig
from sam3dseg.data.synthetic import make_case
from sam3dseg.data.volumes import read_volume, write_volume
from sam3dseg.errors import UserError
from sam3dseg.pipeline.config import PredictConfig
from sam3dseg.pipeline.inference.predict import predict_probabilities
from sam3dseg.pipeline.inference.predictor import Encoded, Predictor
from sam3dseg.pipeline.model_file import load_model_file
from sam3dseg.pipeline.postprocessing.postprocess import Postprocess
from sam3dseg.pipeline.windows import gaussian_weights, window_starts


def test_window_starts_cover_the_volume():
    assert window_starts(5, 8, 0.5) == [0]
    assert window_starts(8, 8, 0.5) == [0]
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(21, 8, 0.5) == [0, 4, 8, 12, 13]
    assert window_starts(21, 8, 0.0) == [0, 8, 13]


def test_gaussian_weights():
    w = gaussian_weights(9)
    assert w[4] == 1 and torch.allclose(w, w.flip(0)) and w.min() >= 1e-3
    assert torch.all(w[:4] < w[1:5])


@pytest.mark.parametrize("depth,window,overlap", [(21, 8, 0.5), (21, 8, 0.75), (5, 8, 0.5), (16, 4, 0.0)])
def test_blending_weights_sum_correctly_at_the_borders(depth, window, overlap, monkeypatch):
    """Windows whose outputs encode each slice's own index blend back to exactly that index:
    every slice is covered, weights normalise to 1 (borders included), offsets line up."""
    predictor = Predictor(tiny_model_file(), tiny_encoder(), PredictConfig(window=window, overlap=overlap))

    def coded(features, start, image=None):
        n = min(window, features.shape[1] - start)
        z = torch.arange(start, start + n, dtype=torch.float32)
        return z.view(1, n, 1, 1).expand(3, n, 2, 2).clone()

    monkeypatch.setattr(predictor.members[0], "window_probs", coded)
    out = list(predictor.model_slices(Encoded(torch.zeros(32, depth, 4, 4), None), (2, 2)))
    assert len(out) == depth
    for z, s in enumerate(out):
        assert torch.allclose(s, torch.full_like(s, float(z)), atol=1e-5), z


def test_window_covering_the_depth_equals_one_pass():
    predictor = Predictor(tiny_model_file(), tiny_encoder(), PredictConfig(window=16))
    features = torch.randn(32, 11, 4, 4)
    streamed = torch.stack(list(predictor.model_slices(Encoded(features, None), (60, 64))), dim=1)
    with torch.no_grad():
        whole = torch.softmax(predictor.members[0].decoder(features[None])[-1][0], dim=0)[:, :, :60, :64]
    assert torch.allclose(streamed, whole, atol=1e-6)


@pytest.mark.parametrize("target", [None, (1.0, 1.0, 1.0)])  # with and without depth resampling
def test_streamed_labels_equal_full_probability_restore(target):
    images, _, geometry = make_case(np.random.default_rng(4))
    state = tiny_model_file(PreprocessConfig(target_spacing=target))
    predictor = Predictor(state, tiny_encoder(), PredictConfig(window=4, overlap=0.5))
    labels, t = predictor.predict_array(images[0], geometry)
    probs = predict_probabilities(predictor, images[0], geometry)
    assert labels.shape == images[0].shape == probs.shape[1:]
    if target:
        assert t.model_shape[0] > t.oriented_shape[0]  # depth really was resampled
    assert np.array_equal(labels, probs.argmax(0))


@pytest.mark.slow
def test_trained_model_predicts_held_out_cases(trained_tiny):
    state = load_model_file(trained_tiny["run"] / "best.pt")
    predictor = Predictor(state, tiny_encoder(128))
    for case in trained_tiny["result"]["val_cases"]:
        image, geometry = read_volume(trained_tiny["dataset"] / "imagesTr" / f"{case}_0000.nii.gz")
        label, _ = read_volume(trained_tiny["dataset"] / "labelsTr" / f"{case}.nii.gz")
        pred, _ = predictor.predict_array(image, geometry)
        dice = [2 * ((pred == k) & (label == k)).sum() / ((pred == k).sum() + (label == k).sum()) for k in (1, 2)]
        assert np.mean(dice) >= 0.8, (case, dice)


# --- the command line, with a registry encoder (vit_b at 32²) -----------------------


@pytest.mark.slow
def test_prediction_keeps_the_input_grid(vit_b_model, tmp_path):
    images, _, geometry = make_case(np.random.default_rng(7), depth=(9, 10), size=(23, 24))  # odd, posed
    assert geometry.direction != (1, 0, 0, 0, 1, 0, 0, 0, 1) and len(set(geometry.spacing)) == 3
    write_volume(images[0], geometry, tmp_path / "in" / "odd_0000.nii.gz")
    args = ["predict", "--model", str(vit_b_model), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert main([*args, "--quiet", "--tta", "--probabilities", "--png"]) == 0
    seg, g = read_volume(tmp_path / "out" / "odd.nii.gz")
    original, g0 = read_volume(tmp_path / "in" / "odd_0000.nii.gz")
    assert seg.shape == original.shape and seg.dtype == np.uint8
    assert g.spacing == g0.spacing and g.origin == g0.origin and g.direction == g0.direction
    probs = np.load(tmp_path / "out" / "odd_probabilities.npy")
    assert probs.shape == (3, *seg.shape) and probs.dtype == np.float16
    top = np.sort(probs, axis=0)
    resolved = top[-1] > top[-2]  # where float16 rounding leaves no tie, the argmax is the label
    decided = load_model_file(vit_b_model).postprocess  # the post-processing training decided, applied to the argmax
    expected = Postprocess.from_dict(decided).apply(probs.argmax(0).astype(np.uint8), 3)
    assert resolved.mean() > 0.9 and np.array_equal(expected[resolved], seg[resolved])
    assert (tmp_path / "out" / "odd.png").is_file()


@pytest.mark.slow
def test_predict_resumes_and_overwrites(vit_b_model, generated_dataset, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for c in ("case_000", "case_001"):
        (images / f"{c}_0000.nii.gz").write_bytes((generated_dataset / "imagesTr" / f"{c}_0000.nii.gz").read_bytes())
    args = ["predict", "--model", str(vit_b_model), "--input", str(images), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0 and "predicted 2 case(s)" in capsys.readouterr().out
    (tmp_path / "out" / "case_001.nii.gz").unlink()  # as if killed before its segmentation was written
    stamp = (tmp_path / "out" / "case_000.nii.gz").stat().st_mtime_ns
    assert main(args) == 0 and "predicted 1 case(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "case_001.nii.gz").is_file()
    assert (tmp_path / "out" / "case_000.nii.gz").stat().st_mtime_ns == stamp  # not redone
    assert main([*args, "--overwrite"]) == 0 and "predicted 2 case(s)" in capsys.readouterr().out


def _run(args, capsys):
    code = main(args)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("sam3dseg: WARNING")]
    return code, err


@pytest.mark.slow
def test_bad_input_one_line_exit_2(vit_b_model, generated_dataset, tmp_path, capsys):
    image = generated_dataset / "imagesTr" / "case_000_0000.nii.gz"
    not_ours = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, not_ours)
    code, err = _run(["predict", "--model", str(not_ours), "--input", str(image), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and len(err) == 1 and "not a sam3dseg model file" in err[0]

    two = tmp_path / "two"
    two.mkdir()
    for c in range(2):
        (two / f"case_{c:04d}.nii.gz").write_bytes(image.read_bytes())
    code, err = _run(["predict", "--model", str(vit_b_model), "--input", str(two), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and len(err) == 1 and "case_0001.nii.gz is a channel beyond the model's 1" in err[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run(["predict", "--model", str(vit_b_model), "--input", str(empty), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and len(err) == 1 and "no images" in err[0]

    blocker = tmp_path / "a_file"
    blocker.write_text("x", encoding="utf-8")
    code, err = _run(["predict", "--model", str(vit_b_model), "--input", str(image), "--out", str(blocker / "sub")], capsys)
    assert code == 2 and len(err) == 1 and "cannot be created: " in err[0] and "is a file, not a folder" in err[0]
    assert not any((tmp_path / d).exists() for d in ("o1", "o2", "o3"))


def test_volume_with_other_channel_count_is_refused():
    predictor = Predictor(tiny_model_file(), tiny_encoder())
    images, _, geometry = make_case(np.random.default_rng(1), channels=2)
    with pytest.raises(UserError, match=r"has 2 channel\(s\) but the model was trained on 1"):
        predictor.predict_array(np.stack(images), geometry)
    with pytest.raises(UserError, match=r"has 2 channel\(s\) but the model was trained on 1"):
        predict_probabilities(predictor, np.stack(images), geometry)  # the same check on the probabilities path



def test_one_file_and_a_folder_give_the_same_case_name(generated_dataset, tmp_path):
    from sam3dseg.pipeline.inference.predict import collect_inputs

    image = generated_dataset / "imagesTr" / "case_003_0000.nii.gz"
    assert collect_inputs(image, 1) == [("case_003", [image])]
    folder = collect_inputs(generated_dataset / "imagesTr", 1)
    assert ("case_003", [image]) in folder and len(folder) == 6
    # and evaluate takes what a single-file prediction wrote
    import shutil

    from sam3dseg.pipeline.inference.predict import run_predict

    run_predict(Predictor(tiny_model_file(), tiny_encoder()), image, tmp_path / "pred", progress=False)
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["case_003.nii.gz", "predict.json"]
    (tmp_path / "ref").mkdir()
    shutil.copy(generated_dataset / "labelsTr" / "case_003.nii.gz", tmp_path / "ref")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--strict", "--quiet"]) == 0


def test_depth_flip_tta_flips_the_image_with_the_features():
    """With the image path, --tta decodes the depth-flipped features together with the depth-flipped image."""
    from sam3dseg.pipeline.windows import WindowDecoder

    predictor = Predictor(tiny_model_file(image_path=True), tiny_encoder())
    decoder = predictor.members[0].decoder
    features = torch.randn(32, 5, 4, 4)
    image = torch.randint(0, 256, (1, 5, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        plain = torch.softmax(decoder(features[None], image[None])[-1][0], dim=0)
        mirrored = torch.softmax(decoder(features.flip(1)[None], image.flip(1)[None])[-1][0], dim=0).flip(1)
    got = WindowDecoder(decoder, 8, flip_tta=True).window_probs(features, 0, image)
    assert torch.allclose(got, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the flip matters, so the test can tell


@pytest.mark.parametrize("tta", [False, True])
def test_an_ensemble_averages_probabilities_and_encodes_once(tta, monkeypatch):
    """Two models (one with the image path, other weights and crop depth): the ensemble's probabilities are
    the mean of each model's own, with or without depth-flip TTA, and the volume goes through the encoder once."""
    images, _, geometry = make_case(np.random.default_rng(5))
    config = PredictConfig(flip_tta=tta)
    a, b = tiny_model_file(seed=1), tiny_model_file(seed=2, crop_depth=6, image_path=True)
    alone = [predict_probabilities(Predictor(m, tiny_encoder(), config), images[0], geometry) for m in (a, b)]
    encoder = tiny_encoder()
    slices = []
    original = type(encoder).forward
    monkeypatch.setattr(type(encoder), "forward", lambda module, x: slices.append(x.shape[0]) or original(module, x))
    together = predict_probabilities(Predictor([a, b], encoder, config), images[0], geometry)
    assert sum(slices) == Predictor(a, tiny_encoder()).features(images[0], geometry)[1].model_shape[0]
    assert np.allclose(together, (alone[0] + alone[1]) / 2, atol=1e-5)
    assert not np.allclose(alone[0], alone[1], atol=1e-3)


def test_ensemble_members_must_share_one_encoding(tmp_path, capsys):
    from sam3dseg.pipeline.postprocessing.postprocess import Postprocess

    paths = {}
    for name, record in {"a": tiny_model_file(seed=1), "b": tiny_model_file(seed=2), "size": tiny_model_file(image_size=32),
                         "axis": tiny_model_file(PreprocessConfig(slicing_axis="coronal")), "mr2": tiny_model_file(channels=("MR", "CT"))}.items():  # fmt: skip
        paths[name] = record.save(tmp_path / f"{name}.pt")
    images, _, geometry = make_case(np.random.default_rng(6))
    write_volume(images[0], geometry, tmp_path / "in" / "x.nii.gz")
    for other, key in (("size", "encoder.image_size (32 against 64)"), ("axis", "preprocess.slicing_axis (coronal against axial)"),
                       ("mr2", "channels")):  # fmt: skip
        code = main(["predict", "--model", str(paths["a"]), str(paths[other]), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
        err = [line for line in capsys.readouterr().err.strip().splitlines() if "RANDOM" not in line]
        assert code == 2 and len(err) == 1 and f"differs from {paths['a']} in {key}" in err[0], err
    # models with one decision apply it; different decisions apply none
    same = [tiny_model_file(seed=s) for s in (1, 2)]
    for record in same:
        record.postprocess = Postprocess(classes=[1]).to_dict()
    assert Predictor(same, tiny_encoder()).postprocess.classes == [1]
    same[1].postprocess = Postprocess(foreground=True).to_dict()
    assert Predictor(same, tiny_encoder()).postprocess is None


@pytest.mark.slow
def test_npz_probabilities_are_nnunets_export(vit_b_model, tmp_path):
    """--npz writes what nnU-Net v2 exports (its documented export_prediction_from_logits / SimpleITKIO):
    {case}.npz with float32 "probabilities" (K, z, y, x) and {case}.pkl with sitk_stuff (spacing, origin,
    direction) and the spacing in array order. Averaged with another tool's npz as nnUNetv2_ensemble does
    (mean, argmax) and written with those properties as its SimpleITK writer does, the result has our
    segmentation's exact geometry, and with our file alone, our labels."""
    import pickle

    import SimpleITK as sitk

    images, _, geometry = make_case(np.random.default_rng(9), depth=(7, 8), size=(21, 22))
    write_volume(images[0], geometry, tmp_path / "in" / "odd_0000.nii.gz")
    args = ["predict", "--model", str(vit_b_model), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*args, "--npz", "--no-postprocess"]) == 0
    seg, g = read_volume(tmp_path / "out" / "odd.nii.gz")
    with np.load(tmp_path / "out" / "odd.npz", allow_pickle=False) as z:
        assert list(z) == ["probabilities"]
        probs = z["probabilities"]
    assert probs.dtype == np.float32 and probs.shape == (3, *seg.shape) and np.allclose(probs.sum(0), 1, atol=1e-5)
    with open(tmp_path / "out" / "odd.pkl", "rb") as f:
        properties = pickle.load(f)  # our own file, written a moment ago
    assert properties["spacing"] == list(g.spacing)[::-1]
    other = np.random.default_rng(0).dirichlet(np.ones(3), size=seg.shape).transpose(3, 0, 1, 2).astype(np.float32)
    for pair, expected in (([probs], seg), ([probs, other], ((probs + other) / 2).argmax(0))):
        merged = (sum(pair) / len(pair)).argmax(0).astype(np.uint8)
        image = sitk.GetImageFromArray(merged)
        image.SetSpacing(properties["sitk_stuff"]["spacing"])
        image.SetOrigin(properties["sitk_stuff"]["origin"])
        image.SetDirection(properties["sitk_stuff"]["direction"])
        sitk.WriteImage(image, str(tmp_path / "merged.nii.gz"))
        written, g2 = read_volume(tmp_path / "merged.nii.gz")
        assert (g2.spacing, g2.origin, g2.direction) == (g.spacing, g.origin, g.direction)
        top = np.sort(sum(pair) / len(pair), axis=0)
        resolved = top[-1] > top[-2] + 1e-6
        assert np.array_equal(written[resolved], expected[resolved]) and resolved.mean() > 0.9


def test_reading_and_writing_overlap_one_case_ahead_and_behind(generated_dataset, tmp_path, monkeypatch):
    """The next case is read while this one is predicted and the last one written, never more: memory holds three
    cases whatever the folder's size. A case that cannot be read stops the run after the cases before it are written."""
    import threading

    import sam3dseg.pipeline.inference.predict as predict

    events, lock = [], threading.Lock()
    read, write = predict.read_channels, predict.write_volume

    def reading(paths):
        with lock:
            events.append(("read", paths[0].name[:8], threading.current_thread().name))
        if paths[0].name.startswith("case_004"):
            raise UserError("case_004 is unreadable")
        return read(paths)

    def writing(label, geometry, target):
        write(label, geometry, target)
        with lock:
            events.append(("written", target.name[:8], threading.current_thread().name))

    monkeypatch.setattr(predict, "read_channels", reading)
    monkeypatch.setattr(predict, "write_volume", writing)
    with pytest.raises(UserError, match="case_004"):
        predict.run_predict(Predictor(tiny_model_file(), tiny_encoder()), generated_dataset / "imagesTr", tmp_path / "pred", progress=False)
    names = [f"case_00{i}" for i in range(6)]
    reads = [e[1] for e in events if e[0] == "read"]
    assert reads == names[: len(reads)] and "case_004" in reads
    assert all(e[2].startswith("sam3dseg-read") for e in events if e[0] == "read")
    assert all(e[2].startswith("sam3dseg-write") for e in events if e[0] == "written")
    at = {e[:2]: i for i, e in enumerate(events)}
    for k in range(3, len(reads)):  # case k is read only once case k-3 is written: three cases held at most
        assert at[("written", names[k - 3])] < at[("read", names[k])]
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == [f"{n}.nii.gz" for n in names[:4]]


def test_the_caches_precision_reaches_the_model_file_and_predict(generated_dataset, tmp_path, capsys):
    from sam3dseg.model.precision import Int8Linear
    from sam3dseg.pipeline.inference.predictor import load_predictor

    cache, run = tmp_path / "c", tmp_path / "run"
    args = ["cache", "--dataset", str(generated_dataset), "--out", str(cache), "--image-size", "32", "--quiet"]
    assert main([*args, "--encoder-precision", "fp16"]) == 2
    assert "--encoder-precision" in capsys.readouterr().err and not cache.exists()
    assert main([*args, "--encoder-precision", "int8"]) == 0
    assert main(["train", "--cache", str(cache), "--out", str(run), "--quiet", *TINY_RUN]) == 0
    assert load_model_file(run / "best.pt").encoder.precision == "int8"
    quantised = lambda p: any(isinstance(m, Int8Linear) for m in p.encoder.modules())  # noqa: E731
    assert quantised(load_predictor(run / "best.pt"))  # predict computes as the training features were computed
    assert not quantised(load_predictor(run / "best.pt", config=PredictConfig(encoder_precision="fp32")))
    out, two = tmp_path / "pred", tmp_path / "two"  # two of the cases: the path is the same for six
    two.mkdir()
    for image in sorted((generated_dataset / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copy(image, two)
    assert main(["predict", "--model", str(run / "best.pt"), "--input", str(two), "--out", str(out),
                 "--encoder-precision", "int8", "--quiet"]) == 0  # fmt: skip
    assert len(list(out.glob("*.nii.gz"))) == 2 and (out / "predict.json").is_file()
