"""``DIR/index.html``: one self-contained page to scan where the model looks, class by class.

No network and no scripts: CSS is inline and thumbnails are embedded as data URIs, so the
file can be mailed or opened offline; each thumbnail links to its full-size overlay PNG next
to the page. Labelled inputs get, per true class, a gallery of correct and one of incorrect
cases; unlabelled inputs get one gallery per predicted class. Galleries are sorted by
confidence, highest first (confident errors are the ones a clinician should see first).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from fetalplanes.core import atomic

THUMB_WIDTH = 260

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4rem;margin:0 0 .3rem} h2{font-size:1.15rem;margin:2rem 0 .4rem;border-bottom:1px solid #ccc}
h3{font-size:1rem;margin:1rem 0 .4rem;color:#444} .note{color:#555;font-size:.9rem;max-width:70rem}
.warn{background:#fff4d6;border:1px solid #e5c36a;padding:.5rem .8rem;border-radius:6px;max-width:70rem}
.grid{display:flex;flex-wrap:wrap;gap:.7rem} .card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4rem;font-size:.8rem}
.card.bad{border-color:#d33} .card img{display:block;max-width:260px;height:auto} .pair{display:flex;gap:.3rem}
.pair figure{margin:0} figcaption{color:#666;font-size:.72rem;text-align:center}
.meta{margin-top:.25rem;line-height:1.3} .lbl{font-weight:600} .hit{color:#1a7f37} .miss{color:#b3261e}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left} nav a{margin-right:.8rem}
"""


@dataclass
class ReportItem:
    """One explained image as the report shows it."""

    name: str
    predicted: str
    confidence: float
    topk: list[tuple[str, float]]
    overlay_file: str
    thumb: bytes
    true_label: str | None = None
    occlusion_file: str | None = None
    occlusion_thumb: bytes | None = None
    localization: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    state: str = "plane"  # core.postprocess.STATES: the answer the heat map belongs to

    @property
    def correct(self) -> bool | None:
        return None if self.true_label is None else self.true_label == self.predicted


_STATE_NOTE = {"out_of_distribution": "answer: NOT A FETAL PLANE (out-of-distribution gate)",
               "abstain": "answer: abstain (confidence below the model's threshold)"}


def thumbnail(image: Image.Image, width: int = THUMB_WIDTH) -> bytes:
    """A small JPEG of an overlay for embedding (keeps the page a few tens of kB per image)."""
    img = image.convert("RGB")
    if img.width > width:
        img = img.resize((width, max(1, round(img.height * width / img.width))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return buf.getvalue()


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _figure(thumb: bytes, href: str, caption: str) -> str:
    return (
        f'<figure><a href="{_esc(href)}"><img loading="lazy" src="{_data_uri(thumb)}" alt="{_esc(caption)}"></a>'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _card(item: ReportItem, method_title: str) -> str:
    figs = [_figure(item.thumb, item.overlay_file, method_title)]
    if item.occlusion_thumb is not None and item.occlusion_file:
        figs.append(_figure(item.occlusion_thumb, item.occlusion_file, "occlusion"))
    lines = [f'<span class="lbl">{_esc(item.predicted)}</span> {item.confidence:.1%}']
    if item.state != "plane":  # the map explains the top class, but the answer is not that plane
        lines.append(_STATE_NOTE.get(item.state, item.state))
    if len(item.topk) > 1:
        lines.append("2nd: " + _esc(item.topk[1][0]) + f" {item.topk[1][1]:.1%}")
    if item.true_label is not None:
        lines.append("true: " + _esc(item.true_label))
    loc = item.localization
    if loc:
        cls, word = {True: ("hit", "peak in mask"), False: ("miss", "peak outside mask")}.get(
            loc["hit"], ("miss", "empty map (no peak)"))
        energy = "" if loc.get("energy") is None else f", energy in mask {loc['energy']:.0%} (area {loc['area']:.0%})"
        lines.append(f'<span class="{cls}">{word}</span>{energy}')
    lines.append(f'<span title="{_esc(item.name)}">{_esc(item.name[:40])}</span>')
    bad = " bad" if item.correct is False else ""
    return f'<div class="card{bad}"><div class="pair">{"".join(figs)}</div><div class="meta">{"<br>".join(lines)}</div></div>'


def _gallery(title: str, items: Sequence[ReportItem], method_title: str) -> str:
    ranked = sorted(items, key=lambda it: -it.confidence)
    body = "".join(_card(it, method_title) for it in ranked) or '<p class="note">none</p>'
    return f"<h3>{_esc(title)} ({len(items)})</h3><div class=\"grid\">{body}</div>"


def _f3(x: float | None) -> str:
    """Three decimals, or n/a for an undefined value (e.g. a pointing game where every CAM was empty)."""
    return "n/a" if x is None else f"{x:.3f}"


def _localization_table(loc: dict[str, Any]) -> str:
    rows = []
    for name, s in loc.get("maps", {}).items():
        if not s.get("n"):
            continue
        pg, en = s["pointing_game"], s["energy_share"]
        energy = "n/a" if en["mean"] is None else f"{en['mean']:.3f}"
        rows.append(
            f"<tr><td>{_esc(name)}</td><td>{s['n']}</td><td>{_f3(pg['hit_rate'])}</td><td>{energy}</td>"
            f"<td>{_f3(pg['chance_uniform'])}</td><td>{_f3(pg['chance_center'])}</td><td>{_f3(en['chance_center'])}</td></tr>"
        )
    if not rows:
        return ""
    head = (
        "<tr><th>map</th><th>n</th><th>pointing-game hit rate</th><th>energy share in mask</th>"
        "<th>chance: uniform (= mask area)</th><th>centre prior: hit</th><th>centre prior: energy</th></tr>"
    )
    return (f"<h2 id=\"localization\">Localization against masks</h2><table>{head}{''.join(rows)}</table>"
            + _priors_table(loc.get("priors")))


def _ci(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def _priors_table(cmp: dict[str, Any] | None) -> str:
    """The heat map beside two maps that ignore the image, with 95 % intervals and a verdict."""
    if not cmp or not cmp.get("n"):
        return ""
    pg, en = cmp["pointing_game"], cmp["energy_share"]
    names = {"model": "heat map (this model)", "uniform": "uniform prior (flat map)",
             "centre": "centre prior (centred Gaussian)"}
    rows = "".join(f"<tr><td>{_esc(label)}</td><td>{_ci(pg[k])}</td><td>{_ci(en[k])}</td></tr>" for k, label in names.items())
    head = "<tr><th>map</th><th>pointing game [95 % CI]</th><th>energy share in mask [95 % CI]</th></tr>"
    css = "note" if cmp["beats_priors"] else "warn"
    empty = f" {cmp['n_empty_maps']} empty map(s) left out." if cmp.get("n_empty_maps") else ""
    return (
        f"<h3>Does the heat map beat a map that ignores the image? ({cmp['n']} images)</h3><table>{head}{rows}</table>"
        f'<p class="{css}">{_esc(cmp["verdict"][:1].upper() + cmp["verdict"][1:])}.{_esc(empty)}</p>'
        f'<p class="note">{_esc(cmp["method"])}.</p>'
    )


def _sanity_section(sanity: dict[str, Any] | None) -> str:
    """Adebayo et al.'s randomization checks: rank correlation with the trained model's maps."""
    if not sanity or not sanity.get("checks"):
        return ""
    rows = []
    for c in sanity["checks"]:
        q = c["spearman_quartiles"]
        word = '<span class="miss">survives (flagged)</span>' if c["survives"] else '<span class="hit">changes</span>'
        rows.append(f"<tr><td>{_esc(c['name'])}</td><td>{c['spearman_median']:.3f}</td><td>{q[0]:.3f} to {q[1]:.3f}</td>"
                    f"<td>{c['n_constant_maps']}</td><td>{word}</td></tr>")
    head = ("<tr><th>randomization</th><th>median Spearman with trained maps</th><th>quartiles</th>"
            "<th>constant maps</th><th>maps</th></tr>")
    css = "warn" if sanity["flagged"] else "note"
    return (
        f"<h2 id=\"sanity\">Sanity checks ({sanity['n_images']} images)</h2>"
        f'<p class="note">Maps re-computed with the model damaged ({_esc(sanity["reference"])}). A map that explains '
        f"the model must change; a median rank correlation &ge; {sanity['survival_threshold']} flags it.</p>"
        f"<table>{head}{''.join(rows)}</table><p class=\"{css}\">{_esc(sanity['verdict'])}.</p>"
    )


def render_report(
    items: Sequence[ReportItem], class_names: Sequence[str], title: str, method_title: str,
    notes: Sequence[str] = (), localization: dict[str, Any] | None = None, sanity: dict[str, Any] | None = None,
) -> str:
    """The full HTML page."""
    labelled = any(it.true_label is not None for it in items)
    sections, nav = [], []
    for i, cls in enumerate(class_names):
        key = (lambda it: it.true_label) if labelled else (lambda it: it.predicted)
        members = [it for it in items if key(it) == cls]
        if not members:
            continue
        anchor = f"c{i}"
        nav.append(f'<a href="#{anchor}">{_esc(cls)} ({len(members)})</a>')
        if labelled:
            right = [it for it in members if it.correct]
            wrong = [it for it in members if not it.correct]
            body = _gallery("incorrect", wrong, method_title) + _gallery("correct", right, method_title)
            heading = f"{cls}: {len(right)}/{len(members)} correct"
        else:
            body = _gallery("predicted " + cls, members, method_title)
            heading = f"predicted {cls}"
        sections.append(f'<h2 id="{anchor}">{_esc(heading)}</h2>{body}')
    grouping = "true class (incorrect cases first)" if labelled else "predicted class (inputs carry no labels)"
    intro = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="note">{len(items)} images, grouped by {grouping}; each gallery sorted by confidence, highest first. '
        f"Colour shows where the evidence for the explained class lies ({_esc(method_title)}; red = strongest). "
        "Click a thumbnail for the full-size overlay.</p>",
        *[f'<p class="warn">{_esc(n)}</p>' for n in notes],
        f"<nav>{''.join(nav)}</nav>",
    ]
    loc = (_localization_table(localization) if localization else "") + _sanity_section(sanity)
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        + "".join(intro) + loc + "".join(sections) + "</body></html>\n"
    )


def write_report(path: str | Path, html_text: str) -> Path:
    return atomic.write_text(path, html_text)
