"""The module layers of docs/design.md's table: a tilpheno module (or package prefix) -> its layer, read
by ``tests/test_layers.py`` (imports point down) and ``tests/test_docs.py`` (the table states them)."""
from __future__ import annotations

LAYERS = {
    # 0 configuration and foundations: errors, QC records, atomic files, the study's vocabulary in YAML
    "tilpheno": 0, "tilpheno.errors": 0, "tilpheno.qc": 0, "tilpheno.vocabulary": 0, "tilpheno.release": 0,
    "tilpheno.study": 0, "tilpheno.quantiles": 0, "tilpheno.io": 0, "tilpheno.io.atomic": 0, "tilpheno.io.files": 0, "tilpheno.io.text": 0,
    # 1 read: FCS files (and the spillover matrices they carry), tables, output folders
    "tilpheno.io.fcs": 1, "tilpheno.io.spill": 1, "tilpheno.io.fcs_write": 1, "tilpheno.io.outcomes": 1,
    "tilpheno.io.outdir": 1, "tilpheno.io.export": 1, "tilpheno.io.workbook": 1,
    # 2 map and group: detectors -> markers, files -> products and tubes
    "tilpheno.panel": 2, "tilpheno.io.manifest": 2,
    # 3 compensate
    "tilpheno.compensation": 3, "tilpheno.spillover": 3,
    # 4 transform (and acquisition QC on transformed signals, and of a control's settings against its stained tube's)
    "tilpheno.transforms": 4, "tilpheno.acquisition": 4, "tilpheno.control_settings": 4,
    # 5 gate
    "tilpheno.gates": 5,
    # 6 measure (and which gates a phenotype column rests on)
    "tilpheno.phenotype": 6, "tilpheno.gating_path": 6,
    # 7 report and provenance
    "tilpheno.report": 7, "tilpheno.provenance": 7,
    # 8 pipeline, public API, analyses, simulation; 9 the command line
    "tilpheno.pipeline": 8.9, "tilpheno.cache": 8, "tilpheno.gating": 8, "tilpheno.biomarkers": 8, "tilpheno.simulate": 8,
    # inside the pipeline: jobs, inputs, release < one product < executors < run record < outputs < the run < the package
    "tilpheno.pipeline.jobs": 8.1, "tilpheno.pipeline.inputs": 8.1, "tilpheno.pipeline.release": 8.1,
    "tilpheno.pipeline.pool": 8.1,
    "tilpheno.pipeline.product": 8.2, "tilpheno.pipeline.executors": 8.3, "tilpheno.pipeline.record": 8.4,
    "tilpheno.pipeline.outputs": 8.5, "tilpheno.pipeline.run": 8.6,
    "tilpheno.cli": 9,
}
