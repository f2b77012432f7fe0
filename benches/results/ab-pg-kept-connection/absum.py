import json,sys,re,os
d=sys.argv[1]; variants=sys.argv[2:]
def res(f):
    return json.loads([l for l in open(f) if l.startswith('RESULT')][0][7:])
def ut(f):
    u=s=0
    for l in open(f):
        p=l.split()
        if p[0]=='before': u-=int(p[1]); s-=int(p[2])
        if p[0]=='after': u+=int(p[1]); s+=int(p[2])
    return u,s
def tc(f):
    for l in open(f):
        if 'task-clock' in l: return float(l.split()[0].replace(',',''))
r=1
while os.path.exists(f'{d}/floor-{r}-floor.txt'):
    fl=res(f'{d}/floor-{r}-floor.txt')
    out=[f"r{r} floor {fl['per_server_cpu_s']:.0f} p99 {fl['delivery']['last_subscriber']['p99_ms']:.1f}"]
    for v in variants:
        j=res(f'{d}/{v}-{r}-topo2.txt'); cpus=[s['cpu_s'] for s in j['server']]
        u,s=ut(f'{d}/{v}-{r}-topo2.ut')
        out.append(f"{v}: {j['per_server_cpu_s']:.0f} {100*j['per_server_cpu_s']/fl['per_server_cpu_s']:.1f}% ingest {cpus[0]} gw {cpus[1]}+{cpus[2]} gw-only {100*fl['server_cpu_s']/(cpus[1]+cpus[2]):.1f}% u/s {u}/{s} tc {tc(f'{d}/{v}-{r}-topo2.stat'):.0f} p99 {j['delivery']['last_subscriber']['p99_ms']:.1f} lost {j['delivery']['lost']}")
    print(' | '.join(out)); r+=1
