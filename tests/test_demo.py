"""The demo's dataset: labelled cases made from the MNI152 template that nilearn ships."""

import numpy as np
import pytest

pytest.importorskip("nilearn")

from sam3dseg.data.datasets import load_dataset  # noqa: E402
from sam3dseg.demo import CLASS_NAMES, DemoConfig, build_dataset  # noqa: E402
from sam3dseg.data.volumes import read_volume  # noqa: E402


def test_demo_dataset(tmp_path):
    root = build_dataset(tmp_path / "demo", DemoConfig(train_cases=2, test_cases=1))
    ds = load_dataset(root)
    assert ds.class_names == CLASS_NAMES and [c.name for c in ds.cases] == ["brain_000", "brain_001"]
    (a, ga), (b, _) = read_volume(ds.cases[0].images[0]), read_volume(ds.cases[1].images[0])
    la, _ = read_volume(ds.cases[0].label)
    assert a.shape == la.shape == (94, 116, 98) and ga.spacing == (2.0, 2.0, 2.0)
    assert set(np.unique(la)) == {0, 1, 2}
    brain = la > 0
    assert 0.3 < (la == 1).sum() / brain.sum() < 0.7  # grey and white matter both substantial
    assert np.isfinite(a).all() and not np.allclose(a, b)  # cases differ (deformation, contrast)
    assert (root / "imagesTs" / "brain_002_0000.nii.gz").is_file() and (root / "labelsTs" / "brain_002.nii.gz").is_file()
    # the intensity pattern follows the labels: white matter brighter than grey on T1
    assert a[la == 2].mean() > a[la == 1].mean()
