"""Inject FoxP3+ events (drawn from the parent's stained events above the ideal cut) into the FoxP3
gate's reference stained events of captured FMO-gate inputs (fmo_gate_replay.py capture) and replay the
gate with reference_carry quantile: errors and uncertain_threshold flags per contamination share.
Usage: fmo_reference_contamination.py "CAPTURE_GLOB" 0,0.005,0.01"""
import sys, glob, pickle
import numpy as np
from tilpheno.gates import checks
def pct(v,c): v=v[np.isfinite(v)]; return 100*np.count_nonzero(v>c)/v.size
paths=sorted(glob.glob(sys.argv[1])); fracs=[float(x) for x in sys.argv[2].split(',')]
for frac in fracs:
    rng=np.random.default_rng(0)
    rows=[]
    for path in paths:
        rec=pickle.load(open(path,'rb'))
        for c in rec['calls']:
            if c['population']!='CD4+FoxP3+': continue
            kw=dict(c['kw']); tr=kw['transform']; s=c['stained']
            ideal=float(tr.apply(np.array([rec['truth']['ref_foxp3_threshold']]))[0])
            rs=kw['reference_stained'].copy(); pos=s[s>ideal]
            m=int(frac*rs.size)
            if m and pos.size: rs[rng.choice(rs.size,m,replace=False)]=rng.choice(pos,m)
            kw['reference_stained']=rs; kw['reference_carry']='quantile'
            p=checks.place_and_check(c['population'],c['marker'],c['fmo'],s,**kw)
            e=pct(s,p.diagnostics['threshold'])-pct(s,ideal)
            fl=any(f.code=='uncertain_threshold' for f in p.flags)
            new=any(f.code=='uncertain_threshold' and 'reference_carry quantile' in f.message for f in p.flags)
            rows.append((rec['seed'],e,fl,new))
    e=np.array([r[1] for r in rows]); fl=np.array([r[2] for r in rows]); nw=np.array([r[3] for r in rows])
    big=np.abs(e)>3; small=np.abs(e)<1.5; mid=~big&~small
    print(f"{100*frac:.1f}% n={e.size}: mean|e| {np.abs(e).mean():.2f} signed {e.mean():+.2f} worst {np.abs(e).max():.2f} | >3: {big.sum()} flagged {(big&fl).sum()} | 1.5-3: {mid.sum()} flagged {(mid&fl).sum()} | <1.5: {small.sum()} flagged {(small&fl).sum()} (new check {(small&nw).sum()}) | new-check fires {nw.sum()}", flush=True)
    if frac==0: print([ (r[0],round(r[1],2)) for r in rows if r[2]])
