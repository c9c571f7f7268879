"""Validate automatic gating on simulated products with bench phenomena (run by hand).

    .venv/bin/python benchmarks/validate_gating.py --out /tmp/validate_gating            # 60 products
    .venv/bin/python benchmarks/validate_gating.py --out /tmp/v --first-seed 70001 --products 60 --jobs 2

Products: ``simulate_product(..., phenomena=True)`` (nonspecific binding, spreading, tandem
degradation, debris shelves, dim dead cells, dim activation markers; drawn per product) from the
seeds ``first_seed .. first_seed + products - 1``. Seeds already used while developing the
gating: 5001-5040, 70001-70060 (the default), 71001-71060, 72001-72060, 90001-90060,
91001-91120, 92001-92060 (fifth-round development), 96001-96060 (the third round's held-out
measurement, now used too), 97001-97060 (the fourth round's held-out measurement of
``skew_reference``, now used too), 98001-98060 (the fifth round's held-out measurement of
``reference_binding``, now used too), 92061-92120 (sixth-round development), 99001-99060 (the sixth
round's held-out measurement of ``reference_cut_error``, now used too), 91001-91120 and 92001-92120
again (seventh-round development, FoxP3 reference), 100001-100060 (the seventh round's held-out
measurement of ``reference_carry: quantile``, now used too), 101001-101060 (the held-out
measurement of the quantile carry's contamination self-check, now used too), 102001-102060 (the
held-out measurement of the numpy mixture fit, stop 23, now used too), 103001-103060 (held-out
measurement of the reference-positives check, stop 23, now used too), 104001-104060 (final
held-out measurement of stop 23, now used too), 105001-105060 (held-out measurement of the
control-based live/dead cut, stop 24, now used too), 106001-106060 (its replication, stop 24, now
used too), 107001-107060 (held-out test of a CD4+ skew reference for CD56, stop 24, dropped; now
used too), 108001-108060 (held-out measurement of the oblique cells boundary, stop 25, now used
too), 109001-109060 (final held-out measurement of stop 25, now used too), 110001-110060 (held-out
measurement of the PD1 tail-shape check, stop 26, now used too), 111001-111060 (its second
held-out block, stop 26, now used too), 112001-112060 and 113001-113060 (the held-out blocks of stop 27, now used too),
114001-114060 (the held-out block of stop 28, now used too), 115001-115060 and 116001-116060 (stop
29's; V116017's silent miss set stop 30's ``shift_points``, now used too), 117001-117060 (stop 30's
held-out block, now used too), 118001-118060 and 119001-119060 (stop 30's others, now used too), 120001-120060 (stop 31's,
now used too), 121001-125060 (stops 32-35's), 126001-126060 (stop 36's first held-out block, then
its development block), 127001-127060 and 128001-128060 (stop 36's held-out blocks of the CD56 fit, now used too), 129001-129060 (stop 36's last held-out block, then stop 37's development block of the fit gate's
self-checks), 130001-130060 (stop 37's held-out block, then stop 38's development block of FoxP3), 131001-131060
(stop 38's held-out block, then stop 39's development block of PD1 and NKT), 132001-132060 (stop 39's
held-out block, now used too), 133001-133060 (stop 40's held-out block, now used too), 140001-140020
and 70001-70020 (``benchmarks/draft_fmo_truth.py``'s drafted-study blocks, stop 40), 134001-134060 and
135001-135060 (stop 41's held-out blocks, now used too), 136001-136180 (stop 41's development seeds of FoxP3),
137001-137060 (stop 42's held-out block, now used too), 138001-138360 (stop 42's development blocks: false
alarms, NKT, the FoxP3 reference's shape), 138400-138460 (stop 42's NKT over-call under heavy CD56 binding), 139001-139060 (stop 42's second held-out block, now used too), 139101-139160, 139201-139260 (CD56 binding set 250-300 units, tandem loss 0: the NKT fit's held-out test) and 139301-139360 (stop 43's held-out blocks, now used too), 141001-141260 (stop 43's development blocks: NKT under heavy CD56 binding, drawn and with binding or tandem loss set), 141401-141640 (stop 43's development blocks of PD1), 141801-141920 (stop 43's FoxP3 false alarms), 94400-94439 (stop 43's simulated FoxP3 references), 142201-142600 (stop 43's residual-flag blocks, drawn and with tandem loss or CD56 binding set), 143001-143420 (stop 44's PD1 blocks: 143001-143180 and 143301-143360 drawn, 143181-143300 and 143361-143420 with PD1 binding set 150-300 units), 94440-94444 (stop 44's simulated PD1 products), 139401-139580 (stop 44's held-out blocks, 139521-139580 with PD1 binding and its log-SD set, now used too), 144401-144460 (stop 44's development block of the tail-shape rule, PD1 binding set), 143801-144220 (stop 44's false-alarm blocks: drawn 143801-143920 and 144041-144100, CD56 binding set 143921-143980, binding and tandem loss set 143981-144040 and 144101-144160, tandem loss set 144161-144220), 144601-145200 (stop 44's FoxP3 diagnosis: drawn; 144601-144720 also with FoxP3 binding 150-300 units, log-SD 0.6-0.8, FoxP3 scale 0.6-0.8), 94450-94489 (stop 44's simulated FoxP3 products without binding), 147461-147520 (stop 45's before/after check of read-through changes), 147401-147460 (stop 45's before/after check of the per-core sorts; stop 46's of tilpheno.quantiles), 149801-149860 (stop 46's before/after check of the no-control one-population call), 146001-146600 (stop 45's PD1 development
seeds: 146001-146315 captured and replayed, their products beyond 1.5 re-simulated; 146192 in a unit test), 146601-147120 (stop 45's self-check blocks: drawn 146601-146840; ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 146841-147000; the same for CD56 147001-147120), 147601-147780 (stop 46's held-out blocks at its start, 147721-147780 with PD1 binding and its log-SD set; now used: their failures went to the helpers), 148001-148300 and 148401-148460 (stop 46's PD1 development blocks, captured and replayed: drawn; ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8``), 148301-148400 (stop 46's development seeds of the reference's own SD: 148301-148360 before/after, 148302-148303 in unit tests), 148601-148900 (stop 46's PD1 self-check blocks, captured and replayed: drawn 148601-148720, heavy PD1 binding set as above 148721-148900; 147730 in a unit test), 149401-149640 (stop 46's NKT blocks: ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 149401-149520, drawn 149521-149640; 149459 in a unit test), 149861-150100 (stop 46's PD1 under-call self-check blocks, captured and replayed: drawn 149861-150040, heavy PD1 binding set as above 150041-150100), 151041-151400 (stop 47's false-alarm blocks, captured and replayed: heavy PD1 binding set as above 151041-151160, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 151161-151280, drawn 151281-151400), 151401-151760 (stop 47's PD1 transfer blocks, captured and replayed: drawn 151401-151640, heavy PD1 binding set as above 151641-151760), 150801-151040 (stop 47's live-gate development blocks, drawn; 149898 and 150802 in a unit test), 151761-151820 (stop 47's before/after check of the undetermined gate's blanks, the co-expression check and the vocabulary's joined words), 150201-150440 (stop 47's held-out blocks at its start, measured again at its end: drawn 150201-150320, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 150321-150380, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 150381-150440; now used), 150501-150740 (stop 47's held-out blocks at its end, the same four kinds: drawn 150501-150620, PD1 binding set 150621-150680, CD56 binding set 150681-150740; now used too), 153161-153460 (stop 48's NKT blocks, captured and replayed: ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 153161-153400, drawn 153401-153460), 153701-153760 (stop 48's before/after check of arch_48's refactors, drawn), 152801-153160 (stop 48's PD1 blocks, captured and replayed: drawn 152801-153040, heavy PD1 binding set as above 153041-153160; 153138 in a unit test), 153821-154120 (stop 48's shared-reading blocks: heavy PD1 binding set as above 153821-154000, drawn 154001-154120; 153826 in a unit test), 153641-153700 (stop 48's before/after check of the undetermined gate's counts and medians, the negative_sd rule's side and the vocabulary's two-word names), 152001-152240 (stop 48's held-out blocks at its start, measured again at its end: drawn 152001-152120, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 152121-152180, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 152181-152240; now used: V152176's shape went to a helper), 152301-152540 (stop 48's held-out blocks at its end, the same four kinds: drawn 152301-152420, PD1 binding set 152421-152480, CD56 binding set 152481-152540; now used too), 155861-156100 (stop 49's shared-reading blocks: drawn 155861-155980, heavy PD1 binding set as above 155981-156100; 155871 with CD56 binding 299 and tandem loss 0.107 in a unit test), 155001-155480 (stop 49's PD1 blocks, captured and replayed: drawn 155001-155240, heavy PD1 binding set as above 155241-155480; V155337 and V155431 also run alone), 156101-156160 (stop 49's before/after check of undet_49's undetermined-gate messages, drawn), 155501-155740 (stop 49's PD1/FoxP3-under-CD56 blocks, captured with ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` and without; 155576 in a unit test), 156221-156232 (stop 49's check that perf_49's speed changes leave errors.csv as it was, drawn), 154201-154680 (stop 49's held-out blocks, at its start and again at its end: drawn 154201-154320, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 154321-154380, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 154381-154440; at its end only, the same four kinds: drawn 154441-154560, PD1 binding set 154561-154620, CD56 binding set 154621-154680; now used: 154558 captured alone), 156301-156960 (stop 49's small-reference blocks, captured and replayed: drawn 156301-156900, heavy PD1 binding set as above 156901-156960; 148641 captured again), 156961-157020 (stop 49's check that left_49's held-count messages leave errors.csv as it was, drawn), 159301-159360 (stop 50's before/after check of the unstained_carry rule, drawn), 158801-159280 (stop 50's NK/NKT blocks, captured and replayed: drawn 158801-159100, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 159101-159280; 154318 in a unit test), 158001-158720 (stop 50's silent-PD1 blocks, captured and replayed: drawn 158001-158600, heavy PD1 binding set as above 158601-158720; validate_gating before/after on 158001-158120 and 158601-158660; 158625 in a unit test; 154558, 156536 and 148641 captured alone), 159501-159560 (stop 50's before/after check of code_50's held-flag messages, drawn), 159701-159760 (stop 50's before/after check of edge_50's held-count messages, drawn), 157101-157580 (stop 50's held-out blocks, at its start and again at its end: drawn 157101-157220, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 157221-157280, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 157281-157340; at its end only, the same four kinds: drawn 157341-157460, PD1 binding set 157461-157520, CD56 binding set 157521-157580; now used), 161501-161800 (stop 51's FoxP3 blocks: drawn 161501-161620, heavy PD1 binding set as above 161621-161800), 163001-163060 (stop 51's before/after check of held_51's held-number plumbing, drawn), 163301-163360 (stop 51's before/after check of held2_51's held counts, drawn), 161001-161480 (stop 51's skewed-carry switch blocks, captured and replayed: drawn 161001-161240, PD1 binding set 161241-161360, CD56 binding set 161361-161480; validate_gating on main on 161241-161300), 162001-162360 (stop 51's NK/NKT blocks of the CD8- reference: drawn 162001-162120, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 162121-162360; the heavy ones captured and replayed), 162501-162860 (stop 51's false-alarm blocks: heavy PD1 binding set as above 162501-162740, drawn 162741-162860; 162656 and 162719 also run alone), 160101-160580 (stop 51's held-out blocks, at its start and again at its end: drawn 160101-160220, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 160221-160280, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 160281-160340; at its end only, the same four kinds: drawn 160341-160460, PD1 binding set 160461-160520, CD56 binding set 160521-160580; now used), 166501-166560 (stop 52's before/after check of undet_52's held-number messages, drawn), 165201-165560 (stop 52's NK/NKT share-fit blocks, captured and replayed: drawn 165201-165320, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 165321-165560; validate_gating on 165321; 162221 and 162064 captured alone; cd56b_52's before/after of the share fit's cold starts on 165201-165260, 165321-165380 and 165441-165500, 165337 in a unit test), 166401-166420 (stop 52's before/after check of fixed_52's small pages, drawn), 165001-165060 (stop 52's no-FMO fallback checks: before/after, and the same products with the PD1 or the CD8 FMO file left out; 165020, 165055 and 165121 in unit tests; again by fallback2_52 without the PD1, CD8 or FoxP3 FMO, falling back on the unstained control), 166601-166660 (stop 52's before/after check of fallback2_52's unstained-control fallback, drawn), 165601-166200 (stop 52's PD1 blocks, captured and replayed: drawn 165601-165840, heavy PD1 binding set as above 165841-166200), 166301-166360 (stop 52's before/after check that tput_52's speed changes leave errors.csv as it was, drawn), 166901-166960 (stop 52's before/after check of msg_52's no-negative-peak note and messages, drawn), 166961-166980 (stop 52's before/after check of fbreport_52's messages naming the unstained control, drawn), 164001-164480 (stop 52's held-out blocks, at its start and again at its end: drawn 164001-164120 and 164241-164360, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 164121-164180 and 164361-164420, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 164181-164240 and 164421-164480; now used), 168001-168191 and 168301-168486 (stop 53's PD1 blocks, captured: drawn 168001-168191, heavy PD1 binding set as above 168301-168486; 164016, 164042, 164096 and 165656 captured alone), 169101-169280 and 169461-169580 (stop 53's false-alarm blocks, captured: heavy PD1 binding set as above 169101-169280, drawn 169461-169580), 168601-168810 (stop 53's fallback skew-check blocks, ``--without-fmo``: drawn 168601-168660 without the PD1 and FoxP3 FMOs, heavy PD1 binding set as above 168661-168720 likewise, drawn 168721-168780 with every FMO (before/after), drawn 168781-168810 without the CD56 FMO; 168601 and 168605 in unit tests; 165020 replayed), 169701-169880 (stop 53's skew-raised fallback blocks: drawn 169701-169760 and heavy PD1 binding set as above 169761-169820 without the PD1 and FoxP3 FMOs, drawn 169821-169850 with every FMO, drawn 169851-169880 without the CD56 FMO), 169901-169990 (stop 53's CD56-fallback blocks: drawn 169901-169930 without the CD56 FMO, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 169931-169960 likewise, drawn 169961-169990 with every FMO; 168782 and 169909 in unit tests), 168901-168960 (stop 53's before/after check of fbfig_53's fallback overlay, drawn; 168901-168903 in unit tests and a CLI run), 168961-169020 (stop 53's before/after check of msgs_53's clamp and messages, drawn), 167001-167600 (stop 53's held-out blocks, at its start and again at its end: drawn 167001-167120 and 167241-167360, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 167121-167180 and 167361-167420, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 167181-167240 and 167421-167480; without the PD1 and FoxP3 FMOs, drawn 167481-167540 and PD1 binding set 167541-167600; now used), 171001-171150, 171181 and 171241-171300 (stop 54's skew-carry flag blocks: without the PD1 and FoxP3 FMOs drawn 171001-171060 and heavy PD1 binding set as above 171061-171120, drawn 171121-171150 with every FMO (before/after), 171181 captured, 171241-171300 captured and replayed; 171244 and 171282 in unit tests), 171301-171540 and 171581-171585 (stop 54's CD56-fallback blocks without the CD56 FMO: drawn 171301-171360 and 171481-171540, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 171361-171420, drawn 171421-171480 with every FMO; 171581-171585 with NKT set to 10-45 %; 168782 and 169909 replayed), 171601-171960 (stop 54's PD1 silent-miss blocks, captured and replayed: drawn 171601-171660 and 171841-171960, heavy PD1 binding set as above 171661-171840; 171804 in a unit test; 167318 and 167363 replayed alone), 172201-172260 (stop 54's before/after check of tidy_54's refactors: drawn, again without the PD1 and FoxP3 FMOs, 172201-172230 with tandem loss and the CD56 binding set; 172201 and 172205 in unit tests and alone), 170001-170480 (stop 54's held-out blocks, at its start and again at its end: drawn 170001-170120, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 170121-170180, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 170181-170240; without the PD1 and FoxP3 FMOs drawn 170241-170300 and PD1 binding set 170301-170360; without the CD56 FMO drawn 170361-170420 and CD56 binding set 170421-170480; now used), 174001-174300 (stop 55's heavy-PD1 false-alarm blocks, every FMO, captured and replayed: heavy PD1 binding set as above 174001-174100 and 174241-174300, drawn 174101-174190, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 174201-174260; 167318, 167363, 171819 and 153138 replayed), 174301-174600 (stop 55's fallback skew-carry blocks without the PD1 and FoxP3 FMOs: drawn 174301-174360 and heavy PD1 binding set as above 174361-174420 before/after, 174421-174450 drawn and 174481-174510 heavy captured, 174541-174560 drawn with every FMO; 174315 captured alone), 174601-174900 (stop 55's CD56-fallback blocks without the CD56 FMO: drawn 174601-174660, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 174701-174760, drawn 174801-174812 with every FMO; 174608 in a unit test; 171339, 171501 and 171513 replayed), 174901-174990 (stop 55's check that nmfit_55's partition leaves every fit as it was: drawn 174901-174960, heavy PD1 binding set as above 174931-174960, 174961-174990 without the PD1 and FoxP3 FMOs), 173001-173480 (stop 55's held-out blocks, at its start and again at its end: drawn 173001-173120, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 173121-173180, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 173181-173240; without the PD1 and FoxP3 FMOs drawn 173241-173300 and PD1 binding set 173301-173360; without the CD56 FMO drawn 173361-173420 and CD56 binding set 173421-173480; now used), 176001-176240 (stop 56's binding-shape blocks, every FMO, captured and replayed: heavy PD1 binding set as above 176001-176120, drawn 176121-176180, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 176181-176240; 153138, 167363, 171819 and 174292 replayed, 167318 captured), 176301-176510 (stop 56's lowered-fallback blocks: without the PD1 and FoxP3 FMOs drawn 176301-176420 and PD1 binding set 176421-176480, drawn 176481-176510 with every FMO; 173283, 174307, 174315, 174329 and 174330 replayed), 176601-176900 (stop 56's silent log-normal class blocks, every FMO, captured: heavy PD1 binding set 176601-176720 and 176841-176900, drawn 176721-176780, CD56 binding set 176781-176840; 167318, 167363, 171819 and 174292 replayed), 177001-177256 (stop 56's fresh blocks of the halfway weight with the fitted-shape flag, every FMO: heavy PD1 binding set 177001-177120, drawn 177121-177180, CD56 binding set 177181-177240; 177241-177256 the fit's bootstrap noise; 153138 replayed), 175001-175480 (stop 56's held-out blocks, at its start and again at its end: drawn 175001-175120, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 175121-175180, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 175181-175240; without the PD1 and FoxP3 FMOs drawn 175241-175300 and PD1 binding set 175301-175360; without the CD56 FMO drawn 175361-175420 and CD56 binding set 175421-175480; now used), 185301-185330 (stop 58's read-through, dup_58, outputs unchanged: drawn 185301-185310, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8 --without-fmo PD1`` 185311-185315, ``fmo_gate_replay.py capture --set pd1_binding=150-300`` 185316-185317, coverage runs 185321-185330), 184001-184300 (stop 58's heavy-PD1 class blocks of pd1w_58, every FMO: validate_gating and captured: heavy PD1 binding set as above 184001-184120, drawn 184121-184180; captured only: heavy PD1 binding set 184181-184240, drawn 184241-184300), 184601-185110 (stop 58's CD56-fallback blocks of cd56b_58, ``--without-fmo CD56``: ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 184601-184720 captured and replayed, 184841-184960 and 185021-185080 before/after; drawn 184721-184780 (captured) and 184961-185020; drawn with every FMO 184781-184840 and 185081-185110; 184647 in a unit test), 183001-183420 (stop 58's held-out blocks, at its start (ef9b77f) and again at its end: drawn 183001-183060, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 183061-183120 and 183301-183360, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 183121-183180; without the PD1 and FoxP3 FMOs drawn 183181-183240; without the CD56 FMO and CD56 binding set 183241-183300, drawn 183361-183420; now used), 178001-178360 and 179001-180200 (stop 57's held-out and development seeds: stop 57 landed nothing, but they were run), 187001-187480 (stop 59's CD56-fallback blocks of cd56u_59, ``--without-fmo CD56``: drawn 187001-187120, 187241-187300 and 187421-187480, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 187121-187180 and 187361-187420, drawn with every FMO 187181-187240; 187033, 187010 and 187049 in unit tests; 171339, 171501, 171513 and 185001 replayed), 187601-187606 (stop 59's head_59: a six-product folder whose outputs were compared), 187761-188400 (stop 59's reference-above blocks of pd1cap_59, every FMO, captured and replayed: heavy PD1 binding set as above 187761-187940 and 188121-188400, drawn 187941-188060; without the PD1 and FoxP3 FMOs 188061-188120; 188146 in a unit test), 186001-186420 (stop 59's held-out blocks, at its start (c493a20) and again at its end: drawn 186001-186060, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 186061-186120 and 186301-186360, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 186121-186180; without the PD1 and FoxP3 FMOs drawn 186181-186240; without the CD56 FMO and CD56 binding set 186241-186300, drawn 186361-186420; now used), 191801-192280 (stop 60's no-FMO blocks of nofmo_60, captured and replayed: without the PD1 and FoxP3 FMOs 191801-191980 and 192161-192220, without the FoxP3 FMO 191981-192040, without the PD1 FMO 192041-192100, every FMO 192101-192160, heavy FoxP3 binding set (``--set foxp3_binding=150-300 --set foxp3_binding_sd=0.6-0.8``) without the PD1 and FoxP3 FMOs 192221-192280; 192188 in a unit test), 193601-193840 (stop 60's FoxP3-fallback message blocks of foxmsg_60: without the PD1 and FoxP3 FMOs drawn 193601-193720 and heavy FoxP3 binding set (``--set foxp3_binding=150-300 --set foxp3_binding_sd=0.6-0.8``) 193721-193780, validate_gating before/after, captured and replayed; every FMO with heavy FoxP3 binding set 193781-193810 captured, drawn 193811-193840 before/after; 193690 a generator seed in a unit test), 191201-191800 (stop 60's CD56-fallback blocks of cd56sk_60, ``--without-fmo CD56``, captured with the parent's event labels by a scratch script: drawn 191201-191380 and 191561-191620, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 191381-191560 and 191621-191680, ``--set cd56_binding=100-300 --set cd56_binding_sd=0.6-0.8 --set tandem_loss=0`` 191741-191800, ``--set cd56_binding=250-300 --set cd56_binding_sd=0.75-0.8`` 191711-191740; with every FMO drawn 191681-191710 and heavy CD56 binding set 191741-191770; 191331 in a unit test), 190001-190360 (stop 60's heavy-PD1 carry-weight blocks of pd1bias_60, every FMO, captured and replayed: ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 190001-190180, drawn 190181-190300, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 190301-190360; 190001-190120 and 190181-190300 captured again with no PD1+ cells in the non-T lymphocytes), 190601-191200 (stop 60's reference-positives blocks of pd1ref_60, captured and replayed: heavy PD1 binding set as above 190601-190780 and 190961-191140, drawn 190781-190900 and 191141-191200, without the PD1 and FoxP3 FMOs 190901-190960; 190683, 190643 in unit tests), 192401-192760 (stop 60's heavy-CD56 share-fit flag blocks of cd56fa_60, every FMO, captured: ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 192401-192580 and 192641-192760, drawn 192581-192640), 193001-193600 (stop 60's fresh blocks of pd1guard_60, captured and replayed: heavy PD1 binding set as above 193001-193240 and 193481-193600, drawn 193241-193360, CD56 binding set 193361-193420; without the PD1 and FoxP3 FMOs 193421-193480; 193474 in a unit test), 189001-189420 (stop 60's held-out blocks, at its start (0e547cd) and again at its end: drawn 189001-189060, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 189061-189120 and 189301-189360, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 189121-189180; without the PD1 and FoxP3 FMOs drawn 189181-189240; without the CD56 FMO and CD56 binding set 189241-189300, drawn 189361-189420; now used), 195001-195900 (stop 61's PD1/FoxP3 tail census of drawpd_61, every FMO, captured and read by ``pd1_tail_census.py``: drawn 195001-195600 (development) and 195601-195840 (fresh), ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 195841-195900 (fresh)), 198001-198240 and 198361-198420 (stop 61's heavy-PD1 silent-miss blocks of pd1silent_61, every FMO, captured and replayed: ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 198001-198240, drawn 198361-198420), 198601-198900 (its fresh blocks of 50, captured and replayed with main: heavy PD1 binding set as above 198601-198750, drawn 198751-198850, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 198851-198900), 196001-196900 (stop 61's NK/NKT census blocks of drawlin_61, every FMO, captured on main: drawn 196001-196300, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 196301-196480; fresh, captured on main and read as a replication: drawn 196481-196720, heavy CD56 binding set as above 196721-196840; ``--without-fmo CD56`` 196841-196900), 197001-197120 (stop 61's PD1 cross-control development blocks of pd1nofmo_61: 197001-197060 captured without the PD1 and FoxP3 FMOs and read by label with ``pd1_cross_control.py``, 197061-197120 without the PD1 FMO before/after; 197016 and 197028 in unit tests), 197601-197900 (stop 61's fresh blocks of pd1nofmo_61, before/after: without the PD1 FMO 197601-197660, without the PD1 and FoxP3 FMOs 197661-197840, every FMO drawn 197841-197870 and ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 197871-197900), 199001-199104 (stop 61's live-gate development seeds of viab_61: the surface stain tube's live gate against the dead-cell labels by a scratch script, on main and with the unstained control's floor; 199001-199013 with ``--live relative`` too), 199541-199900 (viab_61's fresh blocks, validate_gating before/after: drawn 199601-199840, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 199841-199900, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 199541-199600), 194001-194480 (stop 61's held-out blocks, at its start (b433b6c) and again at its end: drawn 194001-194060, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 194061-194120 and 194301-194360, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 194121-194180; without the PD1 and FoxP3 FMOs drawn 194181-194240; without the CD56 FMO and CD56 binding set 194241-194300, drawn 194361-194420; without the PD1 FMO only, drawn 194421-194480, before and after the cross-tube FMO; drawn 194481-194600 on the final code only; now used), 202001-202900 (stop 62's nofmo2_62: development 202001-202060 without the PD1 and FoxP3 FMOs, 202121-202150 without the PD1 FMO, 202181-202190 ``bench_cross_fmo.py``, 202201-202260 ``pd1_cross_control.py``; fresh, main and the reverted candidate 172621b: without the PD1 and FoxP3 FMOs 202541-202660 and ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 202661-202720, without the PD1 FMO 202721-202780, without the FoxP3 FMO 202781-202840, every FMO 202841-202900), 201001-201840 (stop 62's calibrated-read blocks of calib_62, every FMO, captured on main and replayed: drawn 201001-201060 and 201121-201180, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 201061-201066 and 201181-201240 (development); fresh drawn 201421-201600, heavy PD1 binding set as above 201601-201780, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 201781-201840), 204001-204360 and 204601-204900 (stop 62's PD1/FoxP3 tail census of drawfs_62, every FMO, captured on main and read by ``pd1_tail_census.py``: drawn 204001-204360 (development; 204005-204351 also re-simulated with new tube streams) and 204601-204840 (fresh), ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 204841-204900 (fresh)), 206001-206900 (stop 62's PD1 under-call blocks of under_62, every FMO, captured on main and replayed: drawn 206061-206300; ``--set pd1_binding=100-250 --set pd1_binding_sd=0.2-0.35`` 206001-206060 and 206301-206360, ``--set pd1_binding=50-150 --set pd1_binding_sd=0.2-0.35 --set cd56_binding=100-300 --set cd56_binding_sd=0.2-0.5`` 206361-206420, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.2-0.3`` 206421-206480; fresh: drawn 206541-206780, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 206781-206840, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 206841-206900; 206481-206540 not run), 205001-205060 (stop 62's lead: drawn with ``--set cd8_binding=150-300 --set cd8_binding_sd=0.6-0.8``, whether heavy CD8 binding makes a class of CD8+PD1+ under-calls: it does not), 200001-200600 (stop 62's held-out blocks, at its start (553f71c) and again at its end, identical: drawn 200001-200060, 200481-200540 and 200541-200600, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 200061-200120 and 200301-200360, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 200121-200180; without the PD1 and FoxP3 FMOs drawn 200181-200240; without the CD56 FMO and CD56 binding set 200241-200300, drawn 200361-200420; without the PD1 FMO only, drawn 200421-200480; now used), 211001-211060 and 211541-211900 (stop 63's nofmo3_63: development 211001-211060 without the PD1 and FoxP3 FMOs, validate_gating and captured; fresh, simulated once and gated by main and the branch: without the PD1 and FoxP3 FMOs 211541-211720, without the PD1 FMO 211721-211780, without the FoxP3 FMO 211781-211840, every FMO and without the CD56 FMO 211841-211900; 211006 and 211034 in a unit test), 212001-212300 (stop 63's acquisition-phenomena blocks of stress_63: development 212001-212060, drawn and with
``--set`` fmo_gain_* (every detector; PE alone), fmo_events, spill_apch7_pe under and over; fresh for the misfit check,
main's gating and the check: drawn 212061-212120, ``--set fmo_gain_pe=0.9-1.1`` 212121-212180, every fmo_gain_* 212181-212240,
``--set spill_apch7_pe=0.02-0.15`` 212241-212300; 212054 and 212899 in unit tests), 209001-209160 (stop 63's deconvolution read of deconv_63, every FMO, captured on main and replayed: drawn 209001-209060 and
209101-209160, ``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8`` 209061-209100; 209601-209900 kept fresh and not
run), 210001-210180 and 210541-210900 (stop 63's heavy-PD1 false-alarm blocks of heavyfa_63, every FMO, captured on main and
replayed: heavy PD1 binding set as above 210001-210180 (development) and 210541-210720 (fresh), drawn 210721-210840, ``--set
cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8`` 210841-210900), 213001-213020 (stop 63's check that contention_63's
memory-traffic cuts leave errors.csv as it was, drawn), 214001-214060 (stop 63's misfit2_63: before/after of the misfit check's
screen, drawn), 208001-208600 (stop 63's held-out blocks, at its start (42f2dff) and
again at its end: drawn 208001-208060, 208481-208540 and 208541-208600, ``--set pd1_binding=150-300 --set
pd1_binding_sd=0.6-0.8`` 208061-208120 and 208301-208360, ``--set cd56_binding=150-300 --set cd56_binding_sd=0.6-0.8``
208121-208180; without the PD1 and FoxP3 FMOs drawn 208181-208240; without the CD56 FMO and CD56 binding set
208241-208300, drawn 208361-208420; without the PD1 FMO only, drawn 208421-208480; now used) and the unit tests' seeds (9001-9020, 93001-93011, 93020-93021,
93030-93031, 93050-93051, 93060-93069, 116017, ...); a measurement on products the gating never saw needs
other seeds (``--first-seed``).

Errors (percentage points): lineage variables against the label truth, PD1/FoxP3 variables
against the ideal-FMO reference (``truth.stained_negative_reference``): every variable of the
two tubes (CD4+CD8+ of CD3, CD4+PD1+ of CD4 and the Treg tube's CD3 % since stop 30; before, the
simulator's truth lacked them and blocks up to 117001 measured the study's ten). Targets (issue
13): lineage within 2 points, PD1/FoxP3 within 1.5, on every product.

Flags: a variable's gates are its numerator's and denominator's gates and their gated ancestors
(``VARIABLE_GATES``; not the gates a ``skew_reference`` rests on, which the release and the report do count:
a CD3+ flag catches no PD1+ error through non_T, nor a CD8+ flag an NK/NKT error through CD56+'s not_CD8,
tests/test_release_held.py); a QC flag is "on" a gate when its ``gate`` field names it (since stop 40; before, when its
message opened with ``"<gate> ("``, the convention of ``tilpheno.gates.checks`` the field records). The 2x2 table: products with a variable more than 3
points off (missed = none of its variables' gates flagged) vs products within tolerance (false
alarm = any flag that puts it under review, ``checks.needs_review``).

The yardstick's own noise (since stop 46): the ideal-FMO reference's cut is a percentile of a finite
sample of label negatives, so the reference has a sampling SD of its own; ``ref_sd_<variable>`` (each
PD1/FoxP3 variable, points) is that SD on the product's tubes (``reference_noise.reference_sampling_sd``:
the parent's events between the negatives' order statistics one binomial SD below and above the cut,
halved, over the denominator). Below the 2x2 tables a separate line lists each PD1/FoxP3 variable
beyond tolerance with its error and that SD, ``explained`` when |error| < ``NOISE_SDS`` (2) SDs: the
miss could be the yardstick's. The errors, the 2x2 tables and the counts above it are unchanged.

``--live RULE``: the surface tube's ``live`` valley replaced by the control-based live/dead cut
(``dead`` = ``fmo`` on 7AAD with ``control: unstained`` and that ``rule``, ``live`` = ``!dead``).
``--cells BOUNDARY``: the ``cells`` gates of both tubes placed with that ``boundary`` (``fsc``, the
bundled vertical FSC-A cut, or ``oblique``, the line of the 2-D density; ``placement.place_cells``).
``--set NAME=LOW-HIGH`` (repeatable; ``NAME=VALUE`` for one value): every product's drawn phenomena
with that one set to a value drawn per product, uniformly in [LOW, HIGH], from a stream of the
product's seed (the rest of the product, its other phenomena included, is the drawn block's; but a
binding set on a marker whose drawn binding is 0 takes per-event draws from its tube's phenomena
stream, so the binding and spreading of the markers after it in that tube and the debris shelf are
other draws of the same phenomena: stop 49, benchmarks/README.md). Names
(:data:`SETTABLE`): ``<marker>_binding`` (nonspecific binding median, linear units) and
``<marker>_binding_sd`` (its log-SD) for CD3, CD4, CD8, CD56, PD1, FoxP3 (lower case),
``tandem_loss``, ``pd1_dim_scale``, ``foxp3_scale``, ``dim_dead``. Heavy PD1 binding:
``--set pd1_binding=150-300 --set pd1_binding_sd=0.6-0.8``.

Acquisition phenomena the drawn mix never has (stop 63, ``tilpheno/simulate/phenomena.py``), set only:
``spill_fitc_pe`` and ``spill_apch7_pe`` (:data:`SPILL_PAIRS`: a compensation error, the signed amount added at
acquisition to that spillover coefficient, every tube, the files' ``$SPILLOVER`` the written matrix; positive
under-compensated, e.g. ``--set spill_apch7_pe=0.02-0.15``, negative over-compensated, ``=-0.15--0.02``);
``fmo_gain_<fitc|pe|percp|apc|bv421|apch7>`` (:data:`FMO_GAINS`: that detector's gain in the FMO tubes only, a
factor, e.g. ``--set fmo_gain_pe=0.9-1.1``); ``fmo_events`` (each FMO tube's events as a fraction of the stained
tube's, e.g. ``--set fmo_events=0.05-0.3``). The reference keeps its meaning (the ideal FMO is acquired with the
stained tube: the stained tube's label negatives, compensated with the written matrix); products without them
are main's, byte for byte, and so is their errors.csv (their ``phen_`` columns are added only where present).

``--without-fmo MARKER`` (repeatable: PD1, FoxP3, CD8, CD3, CD4, CD56): every product gated with that marker's FMO
file left out of its manifest, so its ``fmo`` gates fall back as README's fallback order says (the product's unstained
control, else the stained valley); the errors are still against the ideal-FMO reference and the label truth, so
they measure the fallback. It also writes ``fallback.csv`` (each fallback gate of each product: its threshold record,
``method``, ``winner``, ``source_file``, shift, width ratio, the candidates, and the variable whose numerator it is, its
error, the skew carry's ``skew_points``/``skew_cut``/``skew_extra`` and the review flags on the gate other than
``missing_fmo``/``fallback_gate``, the checks that say the cut itself looks wrong) and prints, per variable, how many fallbacks lie beyond tolerance (over- and under-calls) and how
many of those and of the ones within carry such a specific flag. Without it errors.csv is as before.

Writes ``errors.csv`` (product x variable signed errors, flags, the review flags' codes and gates and
their messages, the references' ``ref_sd_`` columns) and prints the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from tilpheno.simulate.phenomena import NSB_MARKERS

LINEAGE = ("viability_pct", "cd3_pct_of_live_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3",
           "nk_pct_of_live_lymph", "nkt_pct_of_live_lymph")
FMO_GATED = ("pd1_pct_of_live_lymph", "cd8pd1_pct_of_cd8", "cd8pd1_pct_of_cd3", "cd4foxp3_pct_of_cd4")
EXTRA_LINEAGE = ("cd4cd8_pct_of_cd3", "cd3_pct_of_lymph_treg")
EXTRA_FMO_GATED = ("cd4pd1_pct_of_cd4",)
"""The bundled strategies' extra variables (not the study's ten; ``cd3_pct_of_lymph_treg`` is the
Treg tube's CD3 %, checked against the surface tube's): measured and tabled, and kept out of the
2x2 table of the study's variables (the second 2x2 includes them)."""
ALL_VARIABLES = LINEAGE + EXTRA_LINEAGE + FMO_GATED + EXTRA_FMO_GATED
TOLERANCE = {**{v: 2.0 for v in LINEAGE + EXTRA_LINEAGE}, **{v: 1.5 for v in FMO_GATED + EXTRA_FMO_GATED}}


def truth_key(variable: str) -> str:
    """The truth column ``variable`` is scored against: the ideal-FMO reference (``ref_...``) for the
    PD1/FoxP3 variables, the label truth for the lineage ones."""
    return f"ref_{variable}" if variable in FMO_GATED + EXTRA_FMO_GATED else variable
MISS_POINTS = 3.0
NOISE_SDS = 2.0
"""A PD1/FoxP3 miss within this many of the reference's own sampling SDs could be the yardstick's (module docstring)."""
VARIABLE_GATES = {
    "viability_pct": ("cells", "singlets", "live", "dead"),
    "cd3_pct_of_live_lymph": ("live_lymph", "CD3+"),
    "cd4_pct_of_cd3": ("CD3+", "CD4+"),
    "cd8_pct_of_cd3": ("CD3+", "CD8+"),
    "cd4cd8_pct_of_cd3": ("CD3+", "CD4+", "CD8+", "CD4+CD8+"),
    "cd3_pct_of_lymph_treg": ("lymph", "CD3+"),
    "nk_pct_of_live_lymph": ("live_lymph", "CD3+", "CD56+", "NK"),
    "nkt_pct_of_live_lymph": ("live_lymph", "CD3+", "CD56+", "NKT"),
    "pd1_pct_of_live_lymph": ("live_lymph", "PD1+"),
    "cd8pd1_pct_of_cd8": ("CD8+", "CD8+PD1+"),
    "cd8pd1_pct_of_cd3": ("CD3+", "CD8+", "CD8+PD1+"),
    "cd4pd1_pct_of_cd4": ("CD3+", "CD4+", "CD4+PD1+"),
    "cd4foxp3_pct_of_cd4": ("CD3+", "CD4+", "CD4+FoxP3+"),
}


LIVE_BLOCK = """  - name: live
    description: 7AAD negative
    parent: singlets
    dims: [7AAD]
    method: valley
    params: {keep: low, bandwidth: 0.02, fallback_sd: 4, rule: lower, k_sd: 3}
"""
CONTROL_LIVE = """  - name: dead
    description: 7AAD above the unstained control's percentile, carried to the stained live peak
    parent: singlets
    dims: [7AAD]
    method: fmo
    params: {{control: unstained, rule: {rule}}}

  - name: live
    description: 7AAD negative (not dead)
    parent: singlets
    expression: "!dead"
"""


def strategies_for(live: str, cells: str = "fsc") -> list:
    """The bundled strategies; ``live`` other than ``valley``: the surface tube's live gate replaced
    by the control-based cut (``dead`` = ``fmo`` on 7AAD with ``control: unstained`` and that
    ``rule``, ``live`` = ``!dead``); ``cells`` other than ``fsc``: every ``cells`` gate placed with
    that ``boundary``."""
    from tilpheno.gates.strategy import default_strategy_paths, parse_strategy

    out = []
    for path in default_strategy_paths():
        text = Path(path).read_text()
        if live != "valley" and LIVE_BLOCK in text:
            text = text.replace(LIVE_BLOCK, CONTROL_LIVE.format(rule=live))
        strategy = parse_strategy(text, str(path))
        out.append(strategy.with_params("cells", boundary=cells) if cells != "fsc" else strategy)
    return out


SPILL_PAIRS = {"spill_fitc_pe": ("FITC", "PE-A"), "spill_apch7_pe": ("APC-H7", "PE-A")}
"""``--set`` name -> the (fluorochrome, detector) coefficient a compensation error changes at acquisition
(``Phenomena.spill_error``): CD3's FITC into PE (PD1, FoxP3), CD8's APC-H7 tandem into PE (PD1)."""
FMO_GAINS = {"fmo_gain_fitc": "FITC-A", "fmo_gain_pe": "PE-A", "fmo_gain_percp": "PerCP-Cy5-5-A",
             "fmo_gain_apc": "APC-A", "fmo_gain_bv421": "BV421-A", "fmo_gain_apch7": "APC-H7-A"}
"""``--set`` name -> the detector whose gain drifts in the FMO tubes (``Phenomena.fmo_gain``)."""
SETTABLE = (tuple(f"{m.lower()}_binding" for m in NSB_MARKERS) + tuple(f"{m.lower()}_binding_sd" for m in NSB_MARKERS)
            + ("tandem_loss", "pd1_dim_scale", "foxp3_scale", "dim_dead") + tuple(SPILL_PAIRS) + tuple(FMO_GAINS)
            + ("fmo_events",))
"""The phenomena ``--set`` can fix (module docstring); a name's place is its value's stream, so names are only added
at the end."""
NUMBER = r"-?(?:\d+\.?\d*|\.\d+)"
SET_VALUE = re.compile(rf"({NUMBER})(?:-({NUMBER}))?")


def parse_set(text: str) -> tuple[str, float, float]:
    """``NAME=LOW-HIGH`` or ``NAME=VALUE`` -> (name, low, high), either bound may be negative
    (``spill_apch7_pe=-0.15--0.02``); a clear error otherwise."""
    name, sep, value = text.partition("=")
    if not sep or name not in SETTABLE:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected NAME=LOW-HIGH with NAME one of {', '.join(SETTABLE)}")
    match = SET_VALUE.fullmatch(value)
    if match is None:
        raise argparse.ArgumentTypeError(f"--set {text!r}: {value!r} is not a number or a range LOW-HIGH")
    bounds = float(match[1]), float(match[2] or match[1])
    if bounds[0] > bounds[1]:
        raise argparse.ArgumentTypeError(f"--set {text!r}: LOW {bounds[0]:g} exceeds HIGH {bounds[1]:g}")
    return name, bounds[0], bounds[1]


def set_phenomena(phen, seed: int, sets: tuple[tuple[str, float, float], ...]):
    """``phen`` (a drawn ``Phenomena``) with each of ``sets`` (:func:`parse_set`) drawn for the product of
    ``seed`` (its own stream: the same value whatever else is set)."""
    nsb, nsb_sd, other = dict(phen.nsb), dict(phen.nsb_sd), {}
    spill, gain = dict(phen.spill_error), dict(phen.fmo_gain)
    for name, low, high in sets:
        value = float(np.random.default_rng([seed, SETTABLE.index(name)]).uniform(low, high))
        marker = {m.lower(): m for m in NSB_MARKERS}.get(name.split("_binding")[0])
        if name in SPILL_PAIRS:
            spill[SPILL_PAIRS[name]] = value
        elif name in FMO_GAINS:
            gain[FMO_GAINS[name]] = value
        elif name.endswith("_binding_sd"):
            nsb_sd[marker] = value
        elif name.endswith("_binding"):
            nsb[marker] = value
        else:
            other[name] = value
    return dataclasses.replace(phen, nsb=nsb, nsb_sd=nsb_sd, spill_error=spill, fmo_gain=gain, **other)


FMO_MARKERS = ("CD3", "CD4", "CD8", "CD56", "PD1", "FoxP3")
"""The markers whose FMO file ``--without-fmo`` can leave out (the simulated products' FMO tubes)."""
GENERIC_FALLBACK = frozenset({"missing_fmo", "fallback_gate"})
"""The review flags every fallback gate carries: they say the FMO is missing, not that the cut looks wrong."""


SKEW_COLUMNS = ("skew_points", "skew_cut", "skew_extra")
"""The skew carry's diagnostics of a cut anchored on the unstained control (``placement.place_fmo_anchored``'s
``skew_binding``: ``skew_points`` the % of the parent the raise took off, 0 when it did not raise the cut), in
fallback.csv."""


def numerator_variables(gate: str) -> list[str]:
    """The FMO-gated variables whose numerator is ``gate`` (the last of their ``VARIABLE_GATES``)."""
    return [v for v in FMO_GATED + EXTRA_FMO_GATED if VARIABLE_GATES[v][-1] == gate]


def fallback_rows(product_id: str, seed: int, result, errors: dict) -> list[dict]:
    """One row per fallback gate of ``result`` (an ``fmo`` gate whose threshold method is ``fallback_...``) and
    per variable it is the numerator of (:func:`numerator_variables`; one row with an empty variable when none):
    its threshold record, the skew carry's numbers (:data:`SKEW_COLUMNS`, NaN where it did not run), the
    variable's signed error (``errors``) and ``specific_flags``, the codes of the review flags on the gate other
    than :data:`GENERIC_FALLBACK`."""
    from tilpheno.gates.checks import needs_review

    specific: dict[str, set[str]] = {}
    for f in result.qc:
        if f.gate and needs_review(f) and f.code not in GENERIC_FALLBACK:
            specific.setdefault(f.gate, set()).add(f.code)
    rows = []
    for tube in result.tubes:
        if tube.role != "stain" or tube.thresholds is None or tube.thresholds.empty:
            continue
        for record in tube.thresholds.to_dict("records"):
            if not str(record["method"]).startswith("fallback_"):
                continue
            gate = record["population"]
            skew = {k: tube.diagnostics.get(gate, {}).get(k, float("nan")) for k in SKEW_COLUMNS}
            for variable in numerator_variables(gate) or [""]:
                rows.append({"product_id": product_id, "seed": seed, "tube": tube.tube, "gate": gate,
                             "variable": variable, "error": errors.get(variable, float("nan")),
                             "specific_flags": ";".join(sorted(specific.get(gate, ()))), **record, **skew})
    return rows


def drawn_phenomena(seed: int, sets: tuple[tuple[str, float, float], ...]):
    """The bench phenomena of product ``V<seed>``: those the simulator draws (``phenomena=True``; one event per
    tube is enough to draw them), then each of ``sets`` (:func:`set_phenomena`)."""
    from tilpheno.simulate.cohort import simulate_product

    return set_phenomena(simulate_product(f"V{seed}", seed, 1, phenomena=True).phenomena, seed, sets)


def written_product(seed: int, events: int, sets: tuple[tuple[str, float, float], ...], folder: str | Path):
    """Product ``V<seed>`` simulated with the bench phenomena (``phenomena=True``; with ``sets``, the drawn
    phenomena, then the set ones: :func:`set_phenomena`), ``events`` per tube, its FCS files written into
    ``folder``: ``(product, manifest)``, the manifest's files as paths in ``folder``."""
    from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product

    prod = simulate_product(f"V{seed}", seed, events, phenomena=drawn_phenomena(seed, sets) if sets else True)
    write_product(prod, folder)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(Path(folder) / f) for f in manifest["file"]]
    return prod, manifest


def one_product(args) -> dict:
    seed, events, live, cells, sets, without = args
    from tilpheno.gates.checks import needs_review
    from tilpheno.phenotype import analyze_product
    from reference_noise import reference_sampling_sd

    strategies = strategies_for(live, cells)
    with tempfile.TemporaryDirectory() as tmp:
        prod, manifest = written_product(seed, events, sets, tmp)
        manifest = manifest[~((manifest["role"] == "fmo") & manifest["fmo_marker"].isin(without))]
        start = time.process_time()
        result = analyze_product(prod.product_id, manifest, strategies)
        seconds = time.process_time() - start
    review = [f for f in result.qc if needs_review(f)]
    row = {"product_id": prod.product_id, "seed": seed, "gating_cpu_s": seconds,
           "review_flags": ";".join(sorted({f"{f.code}:{f.gate or ''}" for f in review})),
           "review_messages": " | ".join(f.message for f in review)}
    flagged_gates = {f.gate for f in review if f.gate}
    for v in ALL_VARIABLES:
        row[v] = result.phenotype[v] - prod.truth[truth_key(v)]
        row[f"flag_{v}"] = bool(flagged_gates & set(VARIABLE_GATES[v]))
    row.update({k: v for k, v in prod.truth.items() if k.startswith("phen_")})
    sd = reference_sampling_sd(prod.tube("surface", "stain").data, prod.tube("treg", "stain").data)
    row.update({f"ref_sd_{v}": sd[v] for v in FMO_GATED + EXTRA_FMO_GATED})
    if without:
        row["fallbacks"] = fallback_rows(prod.product_id, seed, result, {v: row[v] for v in ALL_VARIABLES})
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for errors.csv")
    parser.add_argument("--first-seed", type=int, default=70001)
    parser.add_argument("--products", type=int, default=60)
    parser.add_argument("--events", type=int, default=20000, help="events per tube")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--live", default="valley", choices=("valley", "relative", "anchored", "percentile"),
                        help="surface live gate: the bundled 7AAD valley rule, or the control-based cut with this rule")
    parser.add_argument("--cells", default="fsc", choices=("fsc", "oblique"),
                        help="boundary of the cells gates (placement.place_cells)")
    parser.add_argument("--set", dest="sets", action="append", type=parse_set, default=[], metavar="NAME=LOW-HIGH",
                        help="set this phenomenon per product, drawn uniformly in the range (repeatable; see the docstring)")
    parser.add_argument("--without-fmo", dest="without", action="append", choices=FMO_MARKERS, default=[],
                        metavar="MARKER", help="leave this marker's FMO file out of every product (repeatable): "
                                               "measures the fallback; also writes fallback.csv")
    args = parser.parse_args(argv)

    seeds = range(args.first_seed, args.first_seed + args.products)
    work = [(s, args.events, args.live, args.cells, tuple(args.sets), tuple(args.without)) for s in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one_product, work))
    else:
        rows = [one_product(w) for w in work]
    fallbacks = pd.DataFrame([f for r in rows for f in r.pop("fallbacks", [])])
    table = pd.DataFrame(rows).set_index("product_id")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "errors.csv")

    print_tables(table, f"{len(table)} products (seeds {seeds.start}-{seeds.stop - 1}), {args.events} events per tube, "
                        f"live gate {args.live}, cells boundary {args.cells}"
                        + "".join(f", {name} {low:g}-{high:g}" for name, low, high in args.sets)
                        + (f", without the FMO of {', '.join(args.without)}" if args.without else ""))
    if args.without:
        fallbacks.to_csv(out / "fallback.csv", index=False)
        print_fallbacks(fallbacks)
        print(f"written: {out / 'fallback.csv'}")
    print(f"\ngating CPU per product: median {table['gating_cpu_s'].median():.2f} s")
    print(f"written: {out / 'errors.csv'}")


def two_by_two(table: pd.DataFrame, variables: list[str]) -> dict:
    """The 2x2 counts over ``variables`` (module docstring): ``off_flagged``, ``off_silent`` (and
    ``silent``, those products' ids), ``within``, ``within_flagged``, ``between``,
    ``between_flagged``; NaN errors (a variable the record lacks) count as within tolerance."""
    err = table[variables].abs()
    off = err.gt(MISS_POINTS).any(axis=1)
    within = ~err.gt(pd.Series(TOLERANCE)[variables], axis=1).any(axis=1)
    caught = pd.Series([all(table.loc[p, f"flag_{v}"] for v in variables if err.loc[p, v] > MISS_POINTS)
                        for p in table.index], index=table.index)
    reviewed = table["review_flags"].fillna("") != ""
    return {"off_flagged": int((off & caught).sum()), "off_silent": int((off & ~caught).sum()),
            "silent": list(table.index[off & ~caught]), "within": int(within.sum()),
            "within_flagged": int((within & reviewed).sum()), "between": int((~off & ~within).sum()),
            "between_flagged": int((~off & ~within & reviewed).sum())}


def print_tables(table: pd.DataFrame, title: str) -> None:
    """The per-variable error table and the 2x2 tables (the study's ten variables, then with the
    extras) of a table of :func:`one_product` rows."""
    variables = list(ALL_VARIABLES)
    err = table[variables].abs()
    summary = pd.DataFrame({
        "mean_abs": err.mean(), "worst_abs": err.max(), "tolerance": pd.Series(TOLERANCE),
        "products_beyond_tolerance": (err.gt(pd.Series(TOLERANCE), axis=1)).sum(),
        "beyond_3_points": (err > MISS_POINTS).sum(),
        "beyond_3_flagged": pd.Series({v: int(((err[v] > MISS_POINTS) & table[f"flag_{v}"]).sum()) for v in variables}),
    })
    summary.index = [f"{v} (extra)" if v in EXTRA_LINEAGE + EXTRA_FMO_GATED else v for v in variables]
    print(title)
    print("\nabsolute error, percentage points (lineage vs label truth, PD1/FoxP3 vs ideal-FMO reference)")
    print(summary.round(2).to_string())
    for name, chosen in (("the study's ten variables", list(LINEAGE + FMO_GATED)), ("with the extras", variables)):
        c = two_by_two(table, chosen)
        print(f"\n2x2 (products), {name}        flagged on the variable's gate | not flagged")
        print(f"  a variable > {MISS_POINTS:g} points off            {c['off_flagged']:>5} | {c['off_silent']} {c['silent']}")
        print(f"  all variables within tolerance      {c['within_flagged']:>5} (any review flag) | "
              f"{c['within'] - c['within_flagged']}")
        print(f"  (between: {c['between']} products beyond tolerance but within {MISS_POINTS:g} points; "
              f"{c['between_flagged']} of them flagged)")
        if c["within"]:
            print(f"false-alarm rate on products within tolerance: {100 * c['within_flagged'] / c['within']:.1f} %")
    print_yardstick(table)


def fallback_summary(fallbacks: pd.DataFrame) -> pd.DataFrame:
    """Per variable of :func:`fallback_rows`'s rows (those with a variable): the fallback gates ``n``, by the
    method they took (``methods``), ``beyond`` tolerance (``over``, ``under``: the signed error's side), the
    ``worst`` |error|, those beyond with a specific flag (``beyond_flagged``; ``over_flagged`` the over-calls among
    them), those within (``within``) and
    with one (``within_flagged``: false alarms of the specific checks; every fallback is under review anyway)."""
    rows = []
    for variable, group in fallbacks[fallbacks["variable"] != ""].groupby("variable", sort=False):
        err = group["error"].astype(float)
        beyond = err.abs() > TOLERANCE[variable]
        flagged = group["specific_flags"].fillna("") != ""
        rows.append({"variable": variable, "n": len(group),
                     "methods": ", ".join(f"{m} {n}" for m, n in group["method"].value_counts().items()),
                     "beyond": int(beyond.sum()), "over": int((beyond & (err > 0)).sum()),
                     "under": int((beyond & (err < 0)).sum()), "worst": float(err.abs().max()),
                     "beyond_flagged": int((beyond & flagged).sum()),
                     "over_flagged": int((beyond & (err > 0) & flagged).sum()), "within": int((~beyond).sum()),
                     "within_flagged": int((~beyond & flagged).sum())})
    return pd.DataFrame(rows)


def print_fallbacks(fallbacks: pd.DataFrame) -> None:
    """The fallback gates' table (:func:`fallback_summary`) and each specific flag's count on those beyond
    tolerance and those within."""
    if fallbacks.empty:
        print("\nno fallback gate")
        return
    print("\nfallback gates (FMO left out): beyond tolerance, and a review flag other than missing_fmo/fallback_gate "
          "on the gate (beyond_flagged; within_flagged = its false alarms)")
    print(fallback_summary(fallbacks).round(2).to_string(index=False))
    scored = fallbacks[fallbacks["variable"] != ""]
    beyond = scored["error"].astype(float).abs() > scored["variable"].map(TOLERANCE)
    codes = sorted({c for s in scored["specific_flags"].fillna("") for c in s.split(";") if c})
    for code in codes:
        has = scored["specific_flags"].fillna("").str.split(";").apply(lambda cs: code in cs)
        print(f"  {code}: on {int((has & beyond).sum())} of {int(beyond.sum())} beyond tolerance, "
              f"{int((has & ~beyond).sum())} of {int((~beyond).sum())} within")


def yardstick_noise(table: pd.DataFrame) -> pd.DataFrame:
    """The PD1/FoxP3 variables beyond tolerance, each with its error, the ideal-FMO reference's own
    sampling SD (``ref_sd_<variable>``) and ``explained``: |error| < ``NOISE_SDS`` of those SDs (the
    yardstick's own noise could explain the miss); empty when the table predates the SD columns."""
    rows = []
    for v in FMO_GATED + EXTRA_FMO_GATED:
        if f"ref_sd_{v}" not in table:
            continue
        for product in table.index[table[v].abs() > TOLERANCE[v]]:
            error, sd = float(table.loc[product, v]), float(table.loc[product, f"ref_sd_{v}"])
            rows.append({"product_id": product, "variable": v, "error": error, "ref_sd": sd,
                         "explained": bool(abs(error) < NOISE_SDS * sd)})
    return pd.DataFrame(rows, columns=["product_id", "variable", "error", "ref_sd", "explained"])


def print_yardstick(table: pd.DataFrame) -> None:
    """The yardstick's own noise beside the PD1/FoxP3 misses (:func:`yardstick_noise`; the counts
    above are unchanged by it)."""
    noise = yardstick_noise(table)
    if noise.empty:
        return
    print(f"\nPD1/FoxP3 beyond tolerance vs the ideal-FMO reference's own sampling SD "
          f"(explained: |error| < {NOISE_SDS:g} SD): {int(noise['explained'].sum())} of {len(noise)} explained")
    print(noise.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
