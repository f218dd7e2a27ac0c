import json
import subprocess
import sys

from regtrack.io import container_output_path, output_path_for
from regtrack.runfolder import RunFiles, read_records


def test_read_records_stops_at_a_torn_last_line(tmp_path):
    path = tmp_path / "frames.jsonl"
    lines = [json.dumps({"index": i, "source": "registration"}) for i in range(3)]
    path.write_text("\n".join(lines) + '\n{"index": 3, "sou')
    assert [r["index"] for r in read_records(path)] == [0, 1, 2]


def test_read_records_keeps_only_frames_in_order(tmp_path):
    path = tmp_path / "frames.jsonl"
    path.write_text("".join(json.dumps({"index": i}) + "\n" for i in (0, 1, 3)))
    assert len(read_records(path)) == 2
    assert read_records(tmp_path / "absent.jsonl") == []


def test_run_files_list_every_result_file(tmp_path):
    files = RunFiles(tmp_path)
    names = {p.name for p in files.results}
    assert {"run.json", "frames.jsonl", "masks.partial.npy", "output.mha"} <= names
    assert files.lock.name not in names


def test_runfolder_imports_neither_itk_nor_torch():
    code = "import sys, regtrack.runfolder; print('itk' in sys.modules or 'torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert found.stdout.strip() == "False"


def test_container_output_path_is_where_output_path_for_puts_it(tmp_path):
    (tmp_path / "input" / "images" / "mri-linacs").mkdir(parents=True)
    assert output_path_for(tmp_path / "input") == container_output_path(tmp_path / "output")
