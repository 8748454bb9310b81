export JAX_PLATFORMS=cpu PYTHONPATH=$PWD/src
cat >/tmp/d <<'E'
import os,sys;B,k,m=map(int,sys.argv[1:4])
os.environ["XLA_FLAGS"]="--xla_force_host_platform_device_count=4"
import jax;from jax import numpy as J,lax;Q=J.linalg;jax.config.update("jax_enable_x64",1)
from jax.sharding import Mesh,PartitionSpec as P;p=P("d")
def one(A,b):
 def g(s):
  i,A,a=s;L=Q.cholesky(A);w,V=Q.eigh(A);y=Q.solve(A+J.eye(k),b)
  return i+1,A+1e-3*(V*w)@V.T/(1.+i),a+J.log(J.diagonal(L)).sum()+y.sum()
 return lax.while_loop(lambda s:s[0]<50,g,(0,A,0.))[2]
M=jax.random.normal(jax.random.key(0),(4,B,k,k));A=M@M.swapaxes(-1,-2)+k*J.eye(k);b=J.ones((4,B,k))
f=jax.vmap(one)
if m:o=jax.jit(jax.shard_map(lambda a,c:f(a[0],c[0])[None],mesh=Mesh(jax.devices(),"d"),in_specs=p,out_specs=p,check_vma=0))(A,b)
else:o=jax.jit(f)(A[0],b[0])
print(o.sum())
E
for c in "16 64" "64 32" "512 3" "2000 3";do for m in 0 1;do SECONDS=0;timeout 60 python3 /tmp/d $c $m >/dev/null 2>/tmp/e;echo "$c $m rc=$? ${SECONDS}s $(tail -c99 /tmp/e)";done;done>$OUT/lapack.txt&
cat >/tmp/s <<'E'
import tempfile,jax,time;from jax import numpy as J,lax;Q=J.linalg;C=jax.config.update;C("jax_enable_x64",1)
C("jax_compilation_cache_dir",tempfile.mkdtemp());C("jax_persistent_cache_min_compile_time_secs",0.)
K=[];t=time.time()
for j in range(400):
 n=2+j%40;c=1+j/7
 def one(A,b,n=n,c=c):
  def g(s):
   i,x,f=s;L=Q.cholesky(A+(c+i)*J.eye(n));x=jax.scipy.linalg.cho_solve((L,1),b-.1*x);return i+1,x,f+J.log(J.diagonal(L)).sum()+x@b
  return lax.while_loop(lambda s:s[0]<20,g,(0,J.zeros(n),0.))[2]
 h=jax.jit(jax.vmap(one));A=J.broadcast_to(J.eye(n)*2+.1,(4,n,n));b=J.ones((4,n))
 K.append((h,h(A,b).block_until_ready(),jax.export.export(h)(A,b).serialize()))
print("ok",time.time()-t)
E
(timeout 300 python3 /tmp/s;echo rc=$?)>$OUT/serialize.txt 2>&1&
python3 -c "import xdist"&&X="-n 8"
timeout 330 python3 -m pytest -q -m "not slow" $X -o addopts="" >$OUT/pytest.txt 2>&1;echo rc=$?>>$OUT/pytest.txt
wait;cat $OUT/*.txt
