"""A Bitcoin Stratum V1 worker class for aiostratum-proxy 1.1 (its `worker_class` setting).

aiostratum keeps one subscription upstream and gives each miner its own nonce space: the
miner is told extranonce1 = pool_extranonce1 + tail (a 1- or 2-byte tail unique to the
miner, see `max_workers`) and an extranonce2_size shortened by the tail's length. The pool
knows only pool_extranonce1, so a miner's share is valid upstream only once the tail is put
back in front of its extranonce2: pool_en1 + (tail + en2) == (pool_en1 + tail) + en2.

The shipped Bitcoin class, `StratumWorkerProtocol`, forwards `mining.submit` unchanged: the
pool gets an extranonce2 one tail too short, hashes a different coinbase and rejects every
share. (`EquihashWorkerProtocol` does prepend the tail, but at Equihash's `params[-2]`;
Bitcoin's submit is [worker, job_id, extranonce2, ntime, nonce(, version_bits)].)

Its `hook_post_subscribe` is a stub as well (a warning, nothing sent), so a miner that
subscribes after the pool's set_difficulty and notify waits for the next job with no
difficulty at all. This class sends it the current ones, as the Equihash class does.
"""

from aiostratum_proxy.errors import JSONRPCInvalidParams
from aiostratum_proxy.protocols.stratum import StratumWorkerProtocol


class HashgateWorkerProtocol(StratumWorkerProtocol):
    async def hook_validate_share_params(self, connection, params):
        if not isinstance(params, list) or len(params) < 5:
            raise JSONRPCInvalidParams
        # the tail is None with max_workers: 1 (one miner, the pool's own nonce space)
        params[2] = (connection.extra.get('extra_nonce1_tail') or '') + params[2]
        return params

    async def hook_post_subscribe(self, connection):
        if self.pool.target_difficulty is not None:
            await connection.rpc('mining.set_difficulty', [self.pool.target_difficulty],
                                 is_notification=True)
        if self.pool.current_job is not None:
            await connection.rpc('mining.notify', self.pool.current_job, is_notification=True)
