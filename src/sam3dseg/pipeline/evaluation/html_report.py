"""``evaluate --html``: one self-contained page per evaluation, for a browser, offline.

The page holds the per-structure table, the per-case Dice table, and a slice viewer: the chosen case's image
with the prediction beside the same image with the reference, both as coloured label layers (the montages'
colours), their slices moved together. The viewer is NiiVue (BSD-2, the neuroimaging field's web viewer),
its bundle vendored in ``sam3dseg/assets/niivue`` with its licence and written into the page, never fetched
from a network; the volumes are embedded too (NIfTI, the image as 8-bit grey through the montages' display
window, :func:`~sam3dseg.data.pictures.display_window`). When the viewer has drawn, the page marks
``<body data-viewer="ready">`` and, on each canvas, ``data-drawn`` (how many of its pixels are not black):
the headless-browser test reads those; a failure shows on the page and marks ``data-viewer="error"``.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from ...common.files import write_text
from ...common.plots import class_rgb
from ...data.pictures import display_window
from ...data.preprocess import anatomical_view
from ...data.volumes import Geometry, write_volume
from ..metrics import hd95_text

# package data found as the recipes are (planning/recipes.py), wherever this module sits in the package
NIIVUE = resources.files("sam3dseg").joinpath("assets", "niivue", "niivue.min.js")
REPORT = "report.html"


def niivue_module_text() -> str:
    """The URL-encoded text of NiiVue's ES module, as its bundle ``export const esm = "..."`` holds it."""
    text = NIIVUE.read_text(encoding="utf-8")
    head = 'export const esm = "'
    if not text.startswith(head) or not text.rstrip().rstrip(";").endswith('"'):
        raise RuntimeError(f"{NIIVUE} is not NiiVue's build/index.min.js (export const esm = \"...\")")
    body = text[len(head) : text.rstrip().rstrip(";").rindex('"')]
    if "<" in body:  # URL-encoded it has none, so it cannot close the <script> it is written into
        raise RuntimeError(f"{NIIVUE} holds '<': not the URL-encoded bundle this page embeds")
    return body


def _nifti_base64(array: np.ndarray, geometry: Geometry) -> str:
    """``array`` as a gzipped NIfTI on ``geometry``, base64."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_volume(array, geometry, Path(tmp) / "v.nii.gz")
        return base64.b64encode(path.read_bytes()).decode("ascii")


def grey_image(image: np.ndarray, modality: str) -> np.ndarray:
    """``image`` through the montages' display window as uint8 (0 black, 255 white)."""
    (lo, hi), _ = display_window(image, modality)
    return np.clip((image.astype(np.float32) - lo) / (hi - lo) * 255.0, 0, 255).round().astype(np.uint8)


def case_entry(name: str, pred: np.ndarray, ref: np.ndarray, geometry: Geometry, image: np.ndarray | None, modality: str) -> dict:
    """One case of the viewer: the volumes (NIfTI, base64) and the slice to open on: the axial slice where
    prediction and reference label the most voxels, as a fraction from inferior to superior (NiiVue's)."""
    (axial,), _ = anatomical_view([(pred > 0) | (ref > 0)], geometry, "axial")  # (D, H, W), D from inferior up
    labelled = axial.sum(axis=(1, 2))
    z = int(labelled.argmax()) if labelled.any() else axial.shape[0] // 2
    grey = grey_image(image, modality) if image is not None else np.zeros(pred.shape, np.uint8)
    return {"name": name, "image": _nifti_base64(grey, geometry), "pred": _nifti_base64(pred.astype(np.uint8), geometry),
            "ref": _nifti_base64(ref.astype(np.uint8), geometry), "slice": (z + 0.5) / axial.shape[0]}  # fmt: skip


def _label_table(names: list[str]) -> dict:
    """NiiVue's label colour map: background transparent, class k in its montage colour."""
    rgb = [(0, 0, 0)] + [class_rgb(k) for k in range(1, len(names))]
    return {"R": [c[0] for c in rgb], "G": [c[1] for c in rgb], "B": [c[2] for c in rgb], "A": [0] + [255] * (len(names) - 1),
            "I": list(range(len(names))), "labels": list(names)}  # fmt: skip


def _number(value: float, digits: int = 3) -> str:
    return "–" if value is None or value != value else ("inf" if value == float("inf") else f"{value:.{digits}f}")


def _tables(summary: dict, rows: list[dict], names: list[str]) -> str:
    """The per-structure table (``id="summary"``) and the per-case Dice table (``id="cases"``)."""
    swatch = lambda k: f'<span class="swatch" style="background:rgb{class_rgb(k)}"></span>'  # noqa: E731
    per = summary["per_class"]
    head = "<tr><th>structure</th><th>Dice</th><th>HD95 mm</th><th>NSD</th><th>found</th></tr>"
    body = "".join(
        f"<tr><td>{swatch(k)}{html.escape(n)}</td><td>{_number(per[n]['dice'])}</td><td>{hd95_text(per[n], 1)}</td>"
        f"<td>{_number(per[n]['nsd'])}</td><td>{per[n].get('found', 0)}/{per[n].get('present', 0)}</td></tr>"
        for k, n in enumerate(names[1:], start=1)
    )
    mean = (f"<tr class='mean'><td>mean</td><td>{_number(summary['mean_dice'])}</td><td>{_number(summary['mean_hd95'], 1)}</td>"
            f"<td>{_number(summary['mean_nsd'])}</td><td></td></tr>")  # fmt: skip
    cases = sorted({r["case"] for r in rows})
    dice = {(r["case"], r["class"]): r["dice"] for r in rows}
    case_head = "<tr><th>case</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names[1:]) + "</tr>"
    case_body = "".join(
        f"<tr><td>{html.escape(c)}</td>" + "".join(f"<td>{_number(dice.get((c, n)))}</td>" for n in names[1:]) + "</tr>" for c in cases
    )
    return (f'<h2>Per structure</h2><table id="summary">{head}{body}{mean}</table>'
            f'<h2>Dice per case</h2><table id="cases">{case_head}{case_body}</table>')  # fmt: skip


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child,th:first-child{text-align:left}
tr.mean{font-weight:bold}.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.4em;border-radius:2px}
.viewers{display:flex;gap:1em}figure{margin:0}.view{width:440px;height:440px;background:#000}
#cases{font-size:85%}
#status{margin-left:1em;color:#555}"""

# first in the page: every error (an uncaught one, a rejected promise, console.error) counted on <html
# data-errors> and listed at the page's foot, so that a reader, and the headless-browser test, see it
ERRORS = """window.pageErrors = [];
function noteError(text) {
  window.pageErrors.push(String(text));
  document.documentElement.dataset.errors = window.pageErrors.length;
  const list = document.getElementById("errors");
  if (list) list.textContent = window.pageErrors.join("\\n");
}
document.documentElement.dataset.errors = 0;
window.addEventListener("error", (e) => noteError(e.message));
window.addEventListener("unhandledrejection", (e) => noteError(e.reason));
const consoleError = console.error.bind(console);
console.error = (...args) => { noteError(args.join(" ")); consoleError(...args); };"""

SCRIPT = """
const status = document.getElementById("status");
function failed(err) {
  document.body.dataset.viewer = "error";
  status.textContent = "the viewer could not start: " + err;
  console.error(err);
}
try {
  const source = decodeURIComponent(document.getElementById("niivue").textContent);
  const niivue = await import(URL.createObjectURL(new Blob([source], {type: "text/javascript"})));
  const data = JSON.parse(document.getElementById("cases-data").textContent);
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
  const viewers = {};
  for (const id of ["pred", "ref"]) {
    const nv = new niivue.Niivue({backColor: [0, 0, 0, 1], show3Dcrosshair: false, isColorbar: false, loadingText: ""});
    await nv.attachToCanvas(document.getElementById(id));
    nv.setRadiologicalConvention(true);  // the patient's right on the left, as the montages and the clinic show it
    viewers[id] = nv;
  }
  viewers.pred.broadcastTo([viewers.ref], {"2d": true, "3d": true});
  async function show(index) {
    const c = data.cases[index];
    for (const [id, nv] of Object.entries(viewers)) {
      await nv.loadVolumes([
        // the bytes themselves as the url (NiiVue reads an ArrayBuffer there; the name gives the format)
        {url: bytes(c.image), name: c.name + "_image.nii.gz", colormap: "gray", cal_min: 0, cal_max: 255},
        {url: bytes(c[id]), name: c.name + "_" + id + ".nii.gz", opacity: 0.6},
      ]);
      nv.volumes[1].setColormapLabel(data.labels);
      nv.updateGLVolume();
      nv.setSliceType(nv.sliceTypeAxial);
      nv.scene.crosshairPos = [0.5, 0.5, c.slice];
      nv.drawScene();
      const gl = nv.gl, w = gl.drawingBufferWidth, h = gl.drawingBufferHeight, px = new Uint8Array(w * h * 4);
      gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
      let drawn = 0;
      for (let i = 0; i < px.length; i += 4) drawn += (px[i] | px[i + 1] | px[i + 2]) > 0;
      document.getElementById(id).dataset.drawn = drawn;
    }
    status.textContent = c.name;
  }
  const select = document.getElementById("case");
  select.addEventListener("change", () => show(select.selectedIndex).catch(failed));
  await show(0);
  document.body.dataset.viewer = "ready";
} catch (err) {
  failed(err);
}
"""


def write_html_report(path: Path, title: str, summary: dict, rows: list[dict], names: list[str], cases: list[dict]) -> Path:
    """The page at ``path``: ``summary`` and ``rows`` as :func:`~sam3dseg.pipeline.evaluation.evaluate.run_evaluate`
    makes them, ``cases`` from :func:`case_entry` (the viewer's cases, in the order of its list)."""
    options = "".join(f"<option>{html.escape(c['name'])}</option>" for c in cases)
    legend = " ".join(f'<span class="swatch" style="background:rgb{class_rgb(k)}"></span>{html.escape(n)}' for k, n in enumerate(names[1:], 1))
    data = json.dumps({"labels": _label_table(names), "cases": cases}).replace("</", "<\\/")  # JSON that cannot close its <script>
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>
<script>{ERRORS}</script></head>
<body data-viewer="loading">
<h1>{html.escape(title)}</h1>
<p>{len({r["case"] for r in rows})} case(s); Dice, HD95 (mm) and surface Dice at {summary["nsd_tolerance_mm"]:g} mm, as
<code>sam3dseg evaluate</code> computes them (metrics.csv, sam3dseg_summary.json).</p>
{_tables(summary, rows, names)}
<h2>Viewer</h2>
<p><label>case <select id="case">{options}</select></label><span id="status">loading the viewer…</span></p>
<div class="viewers"><figure><div class="view"><canvas id="pred"></canvas></div><figcaption>prediction</figcaption></figure>
<figure><div class="view"><canvas id="ref"></canvas></div><figcaption>reference</figcaption></figure></div>
<p>{legend}</p>
<p><small>Viewer: NiiVue 0.69.0 (BSD-2-Clause, © 2021 Niivue), embedded. Axial slices, radiological convention
(the patient's right on the left); scroll or click to move through the slices, right-drag for contrast.</small></p>
<script id="niivue" type="text/plain">{niivue_module_text()}</script>
<script id="cases-data" type="application/json">{data}</script>
<pre id="errors"></pre>
<script type="module">{SCRIPT}</script>
</body></html>
"""
    return write_text(path, page)
