"""An image folder's cleaning report (data_report.json) and its logged summary."""

from typing import Any

from absl import logging

SPLITS = ("train", "validation", "test")

IMBALANCE_RATIO = 5.0      # largest / smallest training class: a warning from here


MAX_LISTED = 5             # files named per problem in the logged summary


def _counter(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def build(scanned, records: list[dict], duplicates: dict,
            assigned: dict, target: tuple[int, int, int], fractions: dict,
            cache: dict) -> dict[str, Any]:
    """The cleaning report of one image folder (what data_report.json holds).

    Args:
        scanned: image_folder.scan()'s result; its `folder`, `layout`,
            `classes`, `files` and `skipped` are read.
        records: image_cache.decoded()'s records, one per scanned file.
        duplicates: {"within_class", "across_classes", "across_splits"}:
            lists of the duplicates found (image_folder's cleaning pass).
        assigned: {split: {class: [file rel paths]}} for every split of
            SPLITS; empty dicts where the carving failed.
        target: (height, width, channels) of the converted images.
        fractions: how the splits were carved: {"seed",
            "validation_fraction", "test_fraction" (None for the split
            layout), "validation_from" ("validation/" or "train")}.
        cache: image_cache.decoded()'s cache facts ({"hit", "path",
            "decoded_files", "seconds"}).

    Returns:
        {"folder", "layout", "classes", "files_found" (image files and
        skipped ones), "images_decoded", "skipped" ([{"file", "reason"}],
        by file: skipped before decoding or unusable), "extension_mismatch"
        ([{"file", "format"}]), "duplicates", "counts" ({split: {class:
        images}}), "totals" ({split: images}), "imbalance" ({"largest",
        "smallest": [class, training images], "ratio", "strong": ratio >=
        IMBALANCE_RATIO, "threshold"}), "images" ({"sizes", "modes",
        "formats": {value: images}, most common first; "converted":
        {"alpha_flattened", "channels", "resized", "exif_rotated", "any":
        images}}), "target" ({"height", "width", "channels"}), "carving"
        (`fractions`), "cache" (`cache`), "summary" (summary())}.
    """
    decoded = [r for r in records if "reason" not in r]
    skipped = scanned.skipped + [{"file": r["file"], "reason": r["reason"]}
                                 for r in records if "reason" in r]
    counts = {split: {name: len(assigned[split].get(name, [])) for name in scanned.classes}
              for split in SPLITS}
    train = counts["train"]
    largest = max(train, key=lambda name: train[name])
    smallest = min(train, key=lambda name: train[name])
    ratio = train[largest] / max(1, train[smallest])
    kinds = ("alpha_flattened", "channels", "resized", "exif_rotated")
    converted = {key: sum(bool(r.get(key)) for r in decoded) for key in kinds}
    converted["any"] = sum(any(r.get(key) for key in kinds) for r in decoded)
    report = {
        "folder": str(scanned.folder),
        "layout": scanned.layout,
        "classes": scanned.classes,
        "files_found": len(scanned.files) + len(scanned.skipped),
        "images_decoded": len(decoded),
        "skipped": sorted(skipped, key=lambda s: s["file"]),
        "extension_mismatch": [{"file": r["file"], "format": r["format"]}
                               for r in decoded if r.get("extension_mismatch")],
        "duplicates": duplicates,
        "counts": counts,
        "totals": {split: sum(counts[split].values()) for split in SPLITS},
        "imbalance": {"largest": [largest, train[largest]],
                      "smallest": [smallest, train[smallest]],
                      "ratio": round(ratio, 3), "strong": ratio >= IMBALANCE_RATIO,
                      "threshold": IMBALANCE_RATIO},
        "images": {
            "sizes": _counter(f"{r['height']}x{r['width']}" for r in decoded),
            "modes": _counter(r["mode"] for r in decoded),
            "formats": _counter(r["format"] for r in decoded),
            "converted": converted,
        },
        "target": {"height": target[0], "width": target[1], "channels": target[2]},
        "carving": fractions,
        "cache": cache,
    }
    report["summary"] = summary(report)
    return report


def summary(report: dict) -> dict[str, Any]:
    """The report's counts, flat (what config.json records).

    Args:
        report: a report as build() makes it (its "summary" is not read).

    Returns:
        {"layout", "classes" (how many), "files_found", "skipped" (how
        many), "duplicates_within_class_dropped",
        "duplicates_across_classes_dropped" (every copy counts),
        "duplicates_across_splits_removed", "converted" (images changed in
        any way), "train", "validation", "test" (images in each split)}.
    """
    duplicates = report["duplicates"]
    return {
        "layout": report["layout"],
        "classes": len(report["classes"]),
        "files_found": report["files_found"],
        "skipped": len(report["skipped"]),
        "duplicates_within_class_dropped": sum(len(d["dropped"])
                                               for d in duplicates["within_class"]),
        "duplicates_across_classes_dropped": sum(len(d["files"])
                                                 for d in duplicates["across_classes"]),
        "duplicates_across_splits_removed": len(duplicates["across_splits"]),
        "converted": report["images"]["converted"]["any"],
        **report["totals"],
    }


def _listed(items: list[str]) -> str:
    more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def log_summary(report: dict) -> None:
    """Logs the report in a few lines; problems as warnings.

    Through absl logging: the counts, files read by content rather than
    extension, the sizes, modes and conversions, and the cache at INFO;
    skipped files, duplicates and a strong class imbalance as warnings.
    A list names up to MAX_LISTED items, then says how many more.

    Args:
        report: a report as build() makes it.
    """
    totals, images = report["totals"], report["images"]
    cache = report["cache"]
    logging.info("Image folder %s (%s): %d classes, %d files; train %d, validation %d, "
                 "test %d", report["folder"], report["layout"], len(report["classes"]),
                 report["files_found"], totals["train"], totals["validation"], totals["test"])
    if report["skipped"]:
        logging.warning("Skipped %d file(s): %s", len(report["skipped"]),
                        _listed([f"{s['file']} ({s['reason']})" for s in report["skipped"]]))
    if report["extension_mismatch"]:
        logging.info("Read by content, not extension: %s", _listed(
            [f"{m['file']} is {m['format']}" for m in report["extension_mismatch"]]))
    duplicates = report["duplicates"]
    if duplicates["within_class"]:
        logging.warning("Duplicates within a class, kept once: %s", _listed(
            [f"{d['kept']} (dropped {', '.join(d['dropped'])})"
             for d in duplicates["within_class"]]))
    if duplicates["across_classes"]:
        logging.warning("Duplicates across classes (conflicting labels), every copy "
                        "dropped: %s", _listed([" = ".join(d["files"])
                                                for d in duplicates["across_classes"]]))
    if duplicates["across_splits"]:
        logging.warning("Removed from the evaluation splits, also in train: %s", _listed(
            [f"{d['removed']} (= {d['train_copy']})" for d in duplicates["across_splits"]]))
    imbalance = report["imbalance"]
    if imbalance["strong"]:
        logging.warning("Strong class imbalance: %s has %d training images, %s %d (%.1fx)",
                        *imbalance["largest"], *imbalance["smallest"], imbalance["ratio"])
    converted = images["converted"]
    logging.info("Sizes %s; modes %s; converted %d to %dx%dx%d (alpha flattened %d, "
                 "channels %d, resized %d)", _listed([f"{k} ({v})" for k, v in
                                                      images["sizes"].items()]),
                 ", ".join(f"{k} {v}" for k, v in images["modes"].items()),
                 converted["any"], report["target"]["height"], report["target"]["width"],
                 report["target"]["channels"], converted["alpha_flattened"],
                 converted["channels"], converted["resized"])
    if cache["hit"]:
        logging.info("Images read from the cache %s in %.2f s (no decoding)",
                     cache["path"], cache["seconds"])
    else:
        logging.info("Decoded %d files in %.2f s%s", cache["decoded_files"], cache["seconds"],
                     f"; cached in {cache['path']}" if cache["path"] else "")
