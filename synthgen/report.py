"""What a run made, at a glance: ``synthgen status`` (text) and ``synthgen report`` (HTML page).

Both read only what is in the run folder (manifest, shard sidecars, shards), so they work while
a run is still going, from any machine that sees the folder or the object-store URL.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.engine.run_folder import RunFolder, check_writable_folder, plan_shards
from synthgen.errors import UserError
from synthgen.labels import views_of


def run_status(out_dir: str | Path) -> dict[str, Any]:
    """Done/total samples, shards, rejects, errors and the observed rate, from the run folder
    (a local folder or an object-store URL)."""
    folder = RunFolder(out_dir)
    manifest = folder.read_manifest()
    recipe = folder.recipe(manifest)
    tasks = plan_shards(recipe.num_samples, recipe.output.shard_size)
    sidecars = folder.read_sidecars(tasks)
    done = sum(i["stop"] - i["start"] for i in sidecars.values())
    written = sum(i["samples"] for i in sidecars.values())
    rejected = sum(len(i.get("rejected", [])) for i in sidecars.values())
    errors = sum(len(i.get("errors", [])) for i in sidecars.values())
    gave_up = sum(len(i.get("gave_up", [])) for i in sidecars.values())
    stamps = [_finished_at(folder, tasks[k], info) for k, info in sidecars.items()]
    seconds = [i.get("seconds", 0.0) for i in sidecars.values()]
    rate = None
    if stamps:
        span = max(stamps) - min(s - d for s, d in zip(stamps, seconds))
        rate = done / span if span > 0 else None
    in_progress = folder.in_flight(tasks)
    return {"recipe": recipe.name, "recipe_hash": manifest["recipe_hash"], "total": recipe.num_samples,
            "done": done, "written": written, "rejected": rejected, "errors": errors,
            "acceptance": written / (written + rejected) if written + rejected else None,
            # every rejection cost one draw: draws per written sample (1.0 = nothing redrawn)
            "attempts_per_accepted": (written + rejected) / written if written else None,
            "gave_up": gave_up,
            "shards_done": len(sidecars), "shards_total": len(tasks), "samples_per_second": rate,
            "in_progress": in_progress}


def _finished_at(folder: RunFolder, task, info: dict[str, Any]) -> float:
    """When a shard was committed: its sidecar says (older runs: the sidecar's file time)."""
    if "finished_at" in info:
        return float(info["finished_at"])
    return (Path(folder.root) / folder.sidecar_rel(task)).stat().st_mtime


def format_status(status: dict[str, Any]) -> str:
    pct = 100.0 * status["done"] / max(status["total"], 1)
    lines = [f"recipe {status['recipe']} ({status['recipe_hash']})",
             f"samples  {status['done']}/{status['total']} done ({pct:.1f}%), {status['written']} written",
             f"shards   {status['shards_done']}/{status['shards_total']} complete, "
             f"{len(status['in_progress'])} being written",
             f"rejected {status['rejected']}, errors {status['errors']}"
             + (f", acceptance {100 * status['acceptance']:.1f}%" if status["acceptance"] is not None else "")
             + (f", {status['attempts_per_accepted']:.2f} draws per written sample"
                if status["attempts_per_accepted"] is not None else "")
             + (f", {status['gave_up']} gave up after filter.max_attempts" if status["gave_up"] else "")]
    if status["samples_per_second"]:
        left = (status["total"] - status["done"]) / status["samples_per_second"]
        lines.append(f"rate     {status['samples_per_second']:.1f} samples/s, ~{left / 60:.1f} min left")
    return "\n".join(lines)


# --- HTML report -------------------------------------------------------------------------------
def _png_data_uri(figure) -> str:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _rgb_data_uri(rgb: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def _collect(out_dir: Path, limit: int) -> list[dict[str, Any]]:
    from synthgen.data import load_shards

    return list(itertools.islice(load_shards(str(out_dir), split_by_node=False), limit))


def _parameter_table(samples: list[dict[str, Any]]) -> dict[str, list]:
    """Sampled parameters of each sample, by name (numbers) or category (strings)."""
    table: dict[str, list] = {k: [] for k in ("age (years)", "height (m)", "pose", "people per image",
                                              "visible fraction", "focal length (px)",
                                              "field of view (deg)", "distance (m)", "azimuth (deg)",
                                              "elevation (deg)", "roll (deg)", "SAM IoU",
                                              "keypoints in SAM mask")}
    for s in samples:
        labels = s["labels"]
        view = next(iter(views_of(labels).values()))
        for instance in view["instances"]:  # every person of a group
            params = instance["params"]
            for key, value in (("age (years)", params.get("age_years")), ("height (m)", params.get("height_m")),
                               ("pose", (params.get("pose_name") or "").split(":")[0] or None),
                               ("visible fraction", instance.get("visible_fraction"))):
                if value is not None:
                    table[key].append(value)
        camera, verdict = labels.get("camera", {}), labels.get("filter") or {}
        values = {"people per image": len(view["instances"]) if len(view["instances"]) > 1 else None,
                  "focal length (px)": view["cam_int"][0][0], "field of view (deg)": camera.get("fov_deg"),
                  "distance (m)": camera.get("distance"), "azimuth (deg)": camera.get("azimuth_deg"),
                  "elevation (deg)": camera.get("elevation_deg"), "roll (deg)": camera.get("roll_deg"),
                  "SAM IoU": verdict.get("sam_iou"), "keypoints in SAM mask": verdict.get("keypoints_in_sam_mask")}
        for key, value in values.items():
            if value is not None:
                table[key].append(value)
    return {k: v for k, v in table.items() if v}


def _histograms(table: dict[str, list], rejected: list[dict[str, Any]]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    items = list(table.items())
    if rejected:
        items.append(("rejection reasons", [r.get("reason") or "unknown" for r in rejected]))
    for name, values in items:
        fig, ax = plt.subplots(figsize=(4, 2.6))
        if isinstance(values[0], str):
            counts = Counter(values).most_common()
            ax.bar([c[0] for c in counts], [c[1] for c in counts], color="#4477aa")
            ax.tick_params(axis="x", rotation=60)
        else:
            ax.hist(np.asarray(values, dtype=float), bins=20, color="#4477aa")
        ax.set_title(name)
        ax.set_ylabel("samples")
        figures.append((name, _png_data_uri(fig)))
        plt.close(fig)
    return figures


def _contact_sheet(samples: list[dict[str, Any]], columns: int = 6, tile: int = 192) -> np.ndarray:
    import cv2

    from synthgen.preview import overlay

    tiles = []
    for s in samples:
        for name, view in s["views"].items():
            image = view.get("image")
            if image is None:
                image = view.get("normal", np.zeros((tile, tile, 3), np.uint8))
            mask = view["mask"].astype(np.uint8) * 255 if "mask" in view else None
            record = views_of(s["labels"])[name]
            tiles.append(cv2.resize(overlay(image, record, mask, view.get("skeleton"), view.get("instance")),
                                    (tile, tile), interpolation=cv2.INTER_AREA))
    while len(tiles) % columns:
        tiles.append(np.full((tile, tile, 3), 255, np.uint8))
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def write_report(out_dir: str | Path, report_path: str | Path | None = None, max_samples: int = 500,
                 sheet_samples: int = 24) -> Path | str:
    """Write an HTML page about a run; returns its path (default ``DIR/report.html``, also for a
    run on object storage: ``URL/report.html``)."""
    folder = RunFolder(out_dir)
    if max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {max_samples}")
    status = run_status(out_dir)
    manifest = folder.read_manifest()
    path = Path(report_path) if report_path else None if folder.remote else Path(folder.root) / "report.html"
    if path is not None:
        _check_report_path(path)
    samples = _collect(out_dir, max_samples)
    if not samples:
        raise UserError(f"{out_dir}: no complete shard yet; run `synthgen status {out_dir}`")
    figures = _histograms(_parameter_table(samples), manifest.get("rejected", []))
    sheet = _rgb_data_uri(_contact_sheet(samples[:sheet_samples]))
    page = _html(status, manifest, figures, sheet, len(samples))
    if path is None:  # a run on object storage: the report goes beside its manifest
        folder.write_text("report.html", page)
        return folder.url("report.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


def _check_report_path(path: Path) -> None:
    """Refuse a report path that cannot be written, before any shard is read."""
    if path.is_dir():
        raise UserError(f"report file {path}: is a folder; pass --html a file name such as "
                        f"{path / 'report.html'}")
    check_writable_folder(path.parent, f"report file {path}: its folder",
                                "pass --html a file path in a folder you can write to")


def _html(status: dict, manifest: dict, figures: list[tuple[str, str]], sheet: str, n: int) -> str:
    esc = html.escape
    stats = manifest.get("stats", {})
    acceptance = f"{100 * status['acceptance']:.1f}%" if status["acceptance"] is not None else "n/a"
    rate = status["samples_per_second"]
    rows = [("samples done / total", f"{status['done']} / {status['total']}"),
            ("samples written", status["written"]), ("rejected", status["rejected"]),
            ("errors", status["errors"]), ("acceptance rate", acceptance),
            ("draws per written sample", f"{status['attempts_per_accepted']:.2f}"
             if status["attempts_per_accepted"] is not None else "n/a"),
            ("indices that gave up", f"{status['gave_up']} (rejected filter.max_attempts times)"),
            ("shards complete", f"{status['shards_done']} / {status['shards_total']}"),
            ("throughput (on disk)", f"{rate:.1f} samples/s" if rate else "n/a"),
            ("last run", f"{stats.get('last_run_samples_per_second', 'n/a')} samples/s, "
                         f"{stats.get('workers', '?')} workers, world size {stats.get('world_size', 1)}"),
            ("device input-wait", f"{100 * stats['device_input_wait_fraction']:.1f}% of the device stages' "
             "time spent waiting for the CPU stages" if "device_input_wait_fraction" in stats else "n/a"),
            ("recipe hash", status["recipe_hash"]), ("synthgen version", manifest.get("synthgen_version"))]
    table = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    figs = "".join(f'<figure><img alt="{esc(name)}" src="{uri}"><figcaption>{esc(name)}</figcaption></figure>'
                   for name, uri in figures)
    errors = "".join(f"<li>#{e['index']}: {esc(e['error'])}</li>" for e in manifest.get("errors", [])[:50])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>synthgen report: {esc(status['recipe'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}} th{{text-align:left;padding-right:1em}}
figure{{display:inline-block;margin:.5em}} .sheet{{max-width:100%}}</style></head>
<body><h1>synthgen run: {esc(status['recipe'])}</h1>
<h2>Summary</h2><table>{table}</table>
<h2>Contact sheet</h2><p>Images with the silhouette tinted, the box, the skeleton, visible (filled) and
hidden (ring) keypoints.</p><img class="sheet" alt="contact sheet" src="{sheet}">
<h2>Sampled parameters and filter scores</h2><p>From the first {n} samples.</p>{figs}
<h2>Errors</h2><ul>{errors or '<li>none</li>'}</ul>
</body></html>
"""
