"""Shared by the engine's tests: drive an LLMEngine with requests arriving at given steps."""


def run_engine(engine, requests, arrivals):
    """Add request i at step arrivals[i]; step until all finish; return the generated tokens in request order."""
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    ids, done, step = {}, {}, 0
    while order or engine.has_unfinished_requests():
        while order and arrivals[order[0]] <= step:
            i = order.pop(0)
            ids[engine.add_request(list(requests[i][0]), requests[i][1])] = i
        for out in engine.step():
            done[ids[out.request_id]] = out.token_ids
        step += 1
        assert step < 2000, "the engine stopped making progress"
    return [done[i] for i in range(len(requests))]
