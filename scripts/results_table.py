"""Print a Markdown table of metrics.json files: `python scripts/results_table.py RUN_DIR [RUN_DIR ...]`."""
import argparse
import json
from pathlib import Path

COLUMNS = ["recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "catalog_hit_ratio",
           "valid_item_ratio", "num_samples"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="folders holding metrics.json (or metrics.json files)")
    args = parser.parse_args()
    print("| run | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for run in args.runs:
        path = Path(run)
        path = path if path.suffix == ".json" else path / "metrics.json"
        if not path.exists():
            print(f"| {run} | " + " | ".join(["missing"] * len(COLUMNS)) + " |")
            continue
        metrics = json.loads(path.read_text())
        cells = [f"{metrics[c]:.4f}" if c != "num_samples" else str(int(metrics[c])) for c in COLUMNS]
        print(f"| {path.parent.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
