"""Diagnostic patch (not kept in the kernel): peel the first k-step of each ragged_mm tile, so that
ncu's per-instruction stall samples tell a tile's first wait for data from the waits inside it."""
import sys
p = sys.argv[1]
s = open(p).read()
a = '''    step = lax.fori_loop(
        0, n_steps,
        lambda ki, step: ring.consume(step, ki == 0, acc_ref, a_op, b_op, None, a, b, rows),
        step)'''
b = '''    body = lambda ki, step: ring.consume(step, ki == 0, acc_ref, a_op, b_op, None, a, b, rows)

    @pl.when(n_steps > 0)
    def _first():
      body(0, step)

    step = lax.fori_loop(1, n_steps, body, step + jnp.minimum(n_steps, 1))'''
assert s.count(a) == 1
open(p, "w").write(s.replace(a, b))
