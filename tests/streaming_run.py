"""`python -m tests.streaming_run --config=... --workdir=...`: experiments.fashion_mnist with
its (synthetic) data served by `sources.StreamSource`, the grain pipeline that streaming
datasets use, instead of the in-memory source. The kill-and-resume test runs it."""

from experiments import main
from rec_lra_jax import builder, sources

_create_data = builder.create_data


class ArrayRecords:
    """Random-access records over in-memory arrays."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"image": self.images[index], "label": int(self.labels[index])}


def keep(example, rng=None):
    del rng
    return example


def streaming_data(config, shard=(0, 1)):
    data = _create_data(config, shard)
    stream = lambda s: sources.StreamSource(ArrayRecords(s.images, s.labels), train_map=keep,
                                            eval_map=keep, threads=1, shard=shard,
                                            eval_spec=s.eval_spec)
    return data._replace(train=stream(data.train), val=stream(data.val), test=stream(data.test))


if __name__ == "__main__":
    builder.create_data = streaming_data
    main.run()
