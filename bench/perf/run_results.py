"""Reading one run's results (the JSON files bench/perf/run.sh writes), for report.py and
plot.py."""
import json
import os


def loader(out):
    """A function that reads OUT/NAME.json, or gives None when the scenario did not run."""

    def load(name):
        path = os.path.join(out, name + ".json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    return load
