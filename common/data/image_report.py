"""An image folder's cleaning report (data_report.json) and its logged summary."""

from typing import Any

from absl import logging

SPLITS = ("train", "validation", "test")

IMBALANCE_RATIO = 5.0      # largest / smallest training class: a warning from here


MAX_LISTED = 5             # files named per problem in the logged summary


def build(scanned, facts: dict, target: tuple[int, int, int], carving: dict,
          cache: dict) -> dict[str, Any]:
    """The cleaning report of one image folder (what data_report.json holds).

    Args:
        scanned: image_folder.scan()'s result; its `folder`, `layout`,
            `classes`, `files` and `skipped` are read.
        facts: what the preparation pass found (the prepared copy's extra,
            checked): "unusable" ([{"file", "reason"}]),
            "extension_mismatch" ([{"file", "format"}]), "images_decoded",
            "duplicates" ({"within_class", "across_classes",
            "across_splits"}), "counts" ({split: {class: images}}), "images"
            ({"sizes", "modes", "formats", "converted"}).
        target: (height, width, channels) of the converted images.
        carving: how the splits were carved: {"seed", "by",
            "validation_fraction", "test_fraction" (None for the split
            layout), "validation_from" ("validation/" or "train")}.
        cache: the prepared copy: {"hit": read as found, "path",
            "decoded_files" (0 on a hit), "seconds"}.

    Returns:
        {"folder", "layout", "classes", "files_found" (image files and
        skipped ones), "images_decoded", "skipped" ([{"file", "reason"}],
        by file: skipped before decoding or unusable), "extension_mismatch",
        "duplicates", "counts" ({split: {class: images}}), "totals" ({split:
        images}), "imbalance" ({"largest", "smallest": [class, training
        images], "ratio", "strong": ratio >= IMBALANCE_RATIO, "threshold"}),
        "images" ({"sizes", "modes", "formats": {value: images}, most common
        first; "converted": {"alpha_flattened", "channels", "resized",
        "exif_rotated", "any": images}}), "target" ({"height", "width",
        "channels"}), "carving" (`carving`), "cache" (`cache`), "summary"
        (summary())}.
    """
    counts = facts["counts"]
    train = counts["train"]
    largest = max(train, key=lambda name: train[name])
    smallest = min(train, key=lambda name: train[name])
    ratio = train[largest] / max(1, train[smallest])
    report = {
        "folder": str(scanned.folder),
        "layout": scanned.layout,
        "classes": scanned.classes,
        "files_found": len(scanned.files) + len(scanned.skipped),
        "images_decoded": facts["images_decoded"],
        "skipped": sorted(scanned.skipped + facts["unusable"], key=lambda s: s["file"]),
        "extension_mismatch": facts["extension_mismatch"],
        "duplicates": facts["duplicates"],
        "counts": counts,
        "totals": {split: sum(counts[split].values()) for split in SPLITS},
        "imbalance": {"largest": [largest, train[largest]],
                      "smallest": [smallest, train[smallest]],
                      "ratio": round(ratio, 3), "strong": ratio >= IMBALANCE_RATIO,
                      "threshold": IMBALANCE_RATIO},
        "images": facts["images"],
        "target": {"height": target[0], "width": target[1], "channels": target[2]},
        "carving": carving,
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
            [f"{d['removed']} (= {d.get('train_copy') or d.get('validation_copy')})"
             for d in duplicates["across_splits"]]))
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
    if cache["hit"]:  # (a new copy was logged as it was prepared)
        logging.info("Images read from the prepared copy %s (no decoding)", cache["path"])
