"""Certificate of analysis (PDF, reportlab) of a product, made from its approved gate set only.

Contents: product, approval (version, signatures with name, meaning and UTC time), the release
spec with each criterion's value and pass/fail, the overall release decision (an approval of gates
that fail a criterion is an out-of-specification release: the failed criteria, values and the
approver's justification, ``service.OutOfSpecification``), each criterion the
run failed on no flagged gate that the approved gates pass, with its deviation justification (who,
when, why: ``ReviewService.deviations``), the study
variables recomputed with the approved gates, every QC flag with its resolution (as entered at
approval), the gate adjustments that led to the approved version (who, when, why), the input
files' SHA-256 (the gated files, then the controls and compensation matrix the run read but did
not gate: ``ReviewSource.other_inputs``), the run's panel file and its SHA-256 (run.json's
``parameters.panel``, ``panel_sha256``; "no panel file" without one), the data hash the signatures are bound to, and the software and strategy
versions. A product without a valid "approved for release" signature gets no certificate.
"""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from xml.sax.saxutils import escape

from tilpheno.pipeline.release import not_evaluable_reason
from tilpheno.report.codebook import labels
from tilpheno.release import NOT_EVALUABLE
from tilpheno.review.regate import recompute
from tilpheno.review.service import REJECTED, Approval, ReviewService, oos_of, run_software_note


def _fmt(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "NA" if math.isnan(f) else f"{f:.2f}" if abs(f) < 1e6 else f"{f:.4g}"


_PADDING = 6.0   # points: reportlab Table's default left and right cell padding
_BREAK_AFTER = re.compile(r"(?<=[_/.\-])")


def fitted_markup(text: str, width: float, font: str, size: float) -> str:
    """Paragraph markup of ``text`` (escaped) for a column ``width`` points wide (padding
    included): a word wider than the column is broken after its ``_``, ``-``, ``.`` or ``/``
    (``cut_in_dense_`` / ``region``, never ``cut_in_dense_regio`` / ``n``), its pieces packed
    greedily into lines (``<br/>``); a piece still too wide is left to reportlab."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    room = width - 2 * _PADDING
    words = []
    for word in str(text).split(" "):
        if stringWidth(word, font, size) <= room:
            words.append(escape(word))
            continue
        lines: list[str] = []
        for piece in _BREAK_AFTER.split(word):
            if lines and stringWidth(lines[-1] + piece, font, size) <= room:
                lines[-1] += piece
            else:
                lines.append(piece)
        words.append("<br/>".join(escape(line) for line in lines if line))
    return " ".join(words)


def certificate_pdf(service: ReviewService, product_id: str, issued: Approval | None = None) -> bytes:
    """The certificate made from ``issued`` (default: the product's standing approval, read now:
    :meth:`ReviewService.release_approval`, VersionConflict when there is none)."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    import tilpheno

    issued = issued or service.release_approval(product_id)
    approved, sigs, approval = issued.version, issued.signatures, issued.approval
    src = service.source
    res = recompute(src, product_id, json.loads(approved.gates_json))
    resolutions = json.loads(approval.qc_resolutions_json)
    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7.5, leading=9)
    body = styles["BodyText"]
    heading = styles["Heading3"].clone("heading", keepWithNext=1)   # never alone at a page's foot, away from its table

    def p(text, style=body):
        return Paragraph(escape(str(text)), style)

    def cell(text, width):
        return Paragraph(fitted_markup(str(text), width, small.fontName, small.fontSize), small)

    def table(rows, widths, header=True, spanned=()):
        """``spanned``: indices of rows whose first cell spans the table's width (their other cells
        empty), each kept on one page with the row above it (whose continuation it is)."""
        t = Table([[cell(c, (sum(widths) if i in spanned and not k else w) * mm) for k, (c, w) in enumerate(zip(r, widths))]
                   for i, r in enumerate(rows)], colWidths=[w * mm for w in widths], repeatRows=1 if header else 0)
        t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                               ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke if header else colors.white),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               *(("SPAN", (0, i), (-1, i)) for i in spanned),
                               *(("NOSPLIT", (0, i - 1), (-1, i)) for i in spanned)]))
        return t

    with service.factory() as db:
        now = service.clock.stamp(db)   # the record's clock, as the certificate's audit entry
    story = [p(f"Certificate of analysis: product {product_id}", styles["Title"]),
             p(f"Issued {now[:19]} UTC by tilpheno {tilpheno.__version__} from gate-set version {approved.version} "
               f"(approved for release by {approval.full_name}, {approval.signed_at[:19]} UTC).")]
    ran = run_software_note(src.run)   # its numbers are this tilpheno's, not the run's
    if ran:
        story.append(p(ran))
    oos = oos_of(approval, res.release)
    status = res.release_status
    if status == NOT_EVALUABLE:   # why, in short: a value missing, no criterion applicable
        status += f": {not_evaluable_reason(res.release)}"
    decision = ("RELEASE CRITERIA MET" if res.release_status == "pass" else
                f"OUT-OF-SPECIFICATION RELEASE ({status})" if oos else
                f"RELEASE CRITERIA NOT MET ({status})")
    story += [Spacer(1, 3 * mm), p(f"Release decision: {decision}", styles["Heading2"].clone("decision", keepWithNext=1))]
    if oos:   # approved although it fails: the failed criteria and the approver's justification
        story.append(p(oos.words()))
    story.append(p(f"Specification: {src.release_spec.name} (source: {src.release_spec.source})"))
    story.append(table([["criterion", "rule", "value", "result"]] +
                       [[r.criterion.name, r.criterion.describe(), r.shown() or "NA",
                         r.outcome.upper() + r.result().removeprefix(r.outcome)] for r in res.release],
                       [45, 60, 30, 35]))
    deviations = service.deviations(product_id, approved)
    if deviations:   # the approved gates pass a criterion the run failed on no flagged gate
        story += [Spacer(1, 3 * mm), p("Deviations: the run's determined fails this release overturns", heading)]
        story += [p(d.words()) for d in deviations]
    story += [Spacer(1, 3 * mm), p("Phenotype (percent; recomputed from every event with the approved gates)", heading)]
    words = labels(src.study.variables, list(src.strategies.values()), src.study)   # the reports' and codebook's words
    story.append(table([["variable", "column", "value"]] +
                       [[words[v], v, _fmt(res.phenotype.get(v))] for v in src.study.variables], [70, 60, 30]))
    flags = src.qc_flags(product_id)
    story += [Spacer(1, 3 * mm), p("QC flags and their resolution", heading)]
    if flags:
        rows = [["severity", "code", "file", "gate", "message", "resolution"]]
        warn_i = 0
        for f in flags:
            resolution = "informational"
            if f["severity"] in ("warning", "error"):
                resolution = resolutions.get(f"{f['code']}:{f['file']}:{warn_i}", "")
                warn_i += 1
            gate = f"{f['gate']} (of {f['gate_file']})" if f.get("gate_file") else f["gate"]
            rows.append([f["severity"], f["code"], f["file"], gate, f["message"], resolution])
        story.append(table(rows, [15, 26, 32, 18, 50, 39]))
    else:
        story.append(p("No QC flags were raised."))
    story += [Spacer(1, 3 * mm), p("Gate review history", heading)]
    story.append(table([["version", "source", "by", "UTC time", "reason"]] +
                       [[f"v{v.version}", v.source, v.created_by, v.created_at[:19], v.reason]
                        for v in service.versions(product_id) if v.version <= approved.version],
                       [15, 35, 25, 35, 70]))
    story += [Spacer(1, 3 * mm), p("Electronic signatures (valid for this version)", heading)]
    # a signature's SHA-256 (64 hex digits, wider than any column) on a row of its own under it: one line, never broken
    # a rejection of the approved version came before its approval, which overruled it (else it would be rejected)
    def meaning(s):
        return f"{s.meaning} (overruled by {approval.full_name}'s approval)" if s.meaning == REJECTED else s.meaning

    signed = [row for s in sigs for row in ([s.full_name, s.username, meaning(s), s.signed_at[:19]],
                                            [f"signature SHA-256: {s.signature_sha256}", "", "", ""])]
    story.append(table([["name", "user", "meaning", "UTC time"]] + signed, [45, 35, 50, 50],
                       spanned=range(2, len(signed) + 1, 2)))
    story += [p(f"{s.full_name} ({s.username}), {s.meaning}: {issued.notes[s.id]}", small)
              for s in sigs if s.id in issued.notes]   # what it does not bind: a control replaced since would not void it
    said = [s for s in sigs if s.comment]   # why: a rejection's reason, an approval's over it
    if said:
        story.append(table([["name", "meaning", "comment"]] + [[s.full_name, meaning(s), s.comment] for s in said],
                           [32, 30, 118]))
    story += [Spacer(1, 3 * mm), p("Inputs and software", heading)]
    rows = [["item", "value"]]
    roles = src.file_roles(product_id)   # tube, role and FMO marker of each file; each control's as run.json records it
    rows += [[f"{f['file']} ({roles.get(f['file'], f['role'])})", f["sha256"]]
             for f in src.inputs_digest(product_id) + src.other_inputs(product_id)]
    params = src.run.get("parameters", {})   # the panel file the run read (which detector carries which marker)
    rows.append([f"panel file {Path(params['panel']).name}", params.get("panel_sha256") or "SHA-256 not recorded"]
                if params.get("panel") else ["panel file", "no panel file"])
    rows += [[f"strategy {s.name} ({tube})", s.sha256] for tube, s in sorted(src.strategies.items())]
    rows += [["FMO percentile", f"{src.fmo_percentile:g}"],
             ["gate set SHA-256 (approved version)", approved.gates_sha256],
             ["data SHA-256 bound to the approval", approval.data_sha256],
             ["tilpheno", tilpheno.__version__], ["run", str(src.run.get("finished_at", ""))]]
    story.append(table(rows, [70, 110]))
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, title=f"Certificate of analysis {product_id}", author="tilpheno",
                            leftMargin=14 * mm, rightMargin=14 * mm, topMargin=14 * mm, bottomMargin=14 * mm,
                            invariant=1)
    doc.build(story)
    return buf.getvalue()
