"""What the benchmarks share: settings for a scratch lakehouse of a given size, and the ratio table."""

from __future__ import annotations

from pathlib import Path

from behavior_spark.config import Settings, load_settings


def bench_settings(folder: Path, raw_rows: int, *extra: str) -> Settings:
    return load_settings(
        None,
        [
            f"lake.root={folder / 'lake'}",
            f"generate.rows={raw_rows}",
            f"generate.output={folder / 'raw'}",
            f"generate.files={max(2, raw_rows // 500_000)}",
            f"ingest.input={folder / 'raw'}",
            "spark.shuffle_partitions=16",
            "spark.driver_memory=12g",
            *extra,
        ],
    )


def ratio_table(rows: list[tuple], unit: str, stage: str, floor: str, core: str) -> str:
    """rows: (size, stage seconds, floor seconds, core seconds) measured side by side in one run."""
    base_size, base_s = rows[0][0], rows[0][1]
    lines = [
        f"| {unit} | {stage} s | rows/s | floor s ({floor}) | {stage} / floor | core s ({core}) | core / floor "
        "| size vs smallest | time vs smallest |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, stage_s, floor_s, core_s in rows:
        lines.append(
            f"| {size:,} | {stage_s:.1f} | {size / stage_s:,.0f} | {floor_s:.1f} | {stage_s / floor_s:.2f}x | "
            f"{core_s:.1f} | {core_s / floor_s:.2f}x | {size / base_size:.1f}x | {stage_s / base_s:.1f}x |"
        )
    return "\n".join(lines)
