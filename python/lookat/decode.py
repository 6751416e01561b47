"""Decoding through a model's cache I/O with onnxruntime's IOBinding: no cache tensor is copied
through numpy.

    import lookat, onnxruntime as ort
    from lookat.decode import CacheDecoder
    sess = ort.InferenceSession("model.lookat.onnx", lookat.session_options())
    dec = CacheDecoder(sess, max_length=4096)
    logits = dec.step(prompt_ids)          # [batch, S, vocab]; then one token at a time

A model rewritten with ``lookat-rewrite --shared-cache`` takes ``past_sequence_length`` and cache
tensors of ``max_sequence_length`` rows. The decoder allocates one buffer per cache tensor, binds it
as both the past input and the present output, and LookatAttention appends the new tokens in place:
a decode step writes one row per layer and head and copies nothing. Any other model (an original
export, a rewrite without ``--shared-cache``) gets its present outputs rebound as the next step's
pasts, as onnxruntime allocated them. The key windows (``*_window``) are small and always rebound.

Inputs the decoder fills: ``input_ids``, ``attention_mask`` (ones: no padding), ``position_ids``,
``past_sequence_length`` and the ``past_key_values.*`` caches (outputs ``present.*``).
"""

import numpy as np
import onnxruntime as ort

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
PAST_SEQUENCE_LENGTH = "past_sequence_length"
MAX_SEQUENCE_LENGTH = "max_sequence_length"
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
           "tensor(int8)": np.int8}


class CacheDecoder:
    """Feeds token ids to ``session`` and keeps its cache between calls (batch rows decode in
    lockstep). ``max_length`` bounds the tokens of a sequence; shared-buffer models need it."""

    def __init__(self, session, max_length=None, batch=1):
        self.session = session
        self.batch = batch
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        self.shared = PAST_SEQUENCE_LENGTH in inputs
        if self.shared and not max_length:
            raise ValueError("a model with shared cache buffers (input 'past_sequence_length') needs max_length")
        self.max_length = max_length
        self.past_names = [n for n in inputs if n.startswith(PAST_PREFIX)]
        self.present_of = {n: PRESENT_PREFIX + n[len(PAST_PREFIX):] for n in self.past_names}
        missing = [p for p in self.present_of.values() if p not in outputs]
        if missing:
            raise ValueError(f"the model has no output(s) {missing} for its cache inputs")
        # Shared buffers: the cache tensors whose rows are max_sequence_length (codes and values).
        self.buffered = [n for n in self.past_names
                         if self.shared and inputs[n].shape[2] == MAX_SEQUENCE_LENGTH]
        self.specs = {n: (inputs[n].shape[1], inputs[n].shape[3], DTYPES[inputs[n].type])
                      for n in self.past_names}
        self.other_inputs = [n for n in inputs if n not in self.specs and n != PAST_SEQUENCE_LENGTH]
        self.reset()

    def reset(self):
        """Forget the cache: the next step starts a new sequence."""
        self.length = 0
        self.binding = self.session.io_binding()
        self.buffers = {}  # numpy arrays behind the shared OrtValues (kept alive here)
        self.past = {}  # OrtValues fed as the pasts of the next step
        for name, (heads, last, dtype) in self.specs.items():
            rows = self.max_length if name in self.buffered else 0
            array = np.zeros((self.batch, heads, rows, last), dtype)
            value = ort.OrtValue.ortvalue_from_numpy(array)
            if name in self.buffered:
                self.buffers[name] = array
                self.binding.bind_ortvalue_input(name, value)
                self.binding.bind_ortvalue_output(self.present_of[name], value)
            self.past[name] = value

    def set_cache(self, arrays, length):
        """Starts from a given cache of ``length`` tokens instead of an empty one (resuming a
        sequence; benchmarks): ``arrays`` maps every ``past_key_values.*`` input to a numpy
        array shaped as that input takes it (for shared buffers: at least ``length`` rows, copied
        into the decoder's own buffers)."""
        self.reset()
        for name in self.past_names:
            array = np.ascontiguousarray(arrays[name], dtype=self.specs[name][2])
            if name in self.buffers:
                self.buffers[name][:, :, :length] = array[:, :, :length]
            else:
                self.past[name] = ort.OrtValue.ortvalue_from_numpy(array)  # keeps `array` alive
        self.length = length

    def step(self, ids):
        """Appends ``ids`` ([batch, S] or [S] int64) and returns the logits of the new positions
        ([batch, S, vocab], float32)."""
        ids = np.asarray(ids, np.int64).reshape(self.batch, -1)
        s = ids.shape[1]
        total = self.length + s
        if self.max_length and total > self.max_length:
            raise ValueError(f"{total} tokens exceed max_length={self.max_length}")
        feeds = {"input_ids": ids,
                 "attention_mask": np.ones((self.batch, total), np.int64),
                 "position_ids": np.tile(np.arange(self.length, total, dtype=np.int64), (self.batch, 1))}
        b = self.binding
        self._keep = []  # numpy inputs must outlive the run
        for name in self.other_inputs:
            if name not in feeds:
                raise ValueError(f"model input '{name}' is not one CacheDecoder can fill")
            self._keep.append(feeds[name])
            b.bind_cpu_input(name, feeds[name])
        if self.shared:
            self._keep.append(np.array(self.length, np.int64))
            b.bind_cpu_input(PAST_SEQUENCE_LENGTH, self._keep[-1])
        rebound = [n for n in self.past_names if n not in self.buffers]
        for name in rebound:
            b.bind_ortvalue_input(name, self.past[name])
        for name in ["logits"] + [self.present_of[n] for n in rebound]:
            b.bind_output(name, "cpu")
        self.session.run_with_iobinding(b)
        # get_outputs() follows the order of the bindings: the shared presents were bound first.
        outs = dict(zip(self._output_order(rebound), b.get_outputs()))
        for name in rebound:
            self.past[name] = outs[self.present_of[name]]
        self.length = total
        return outs["logits"].numpy()

    def _output_order(self, rebound):
        return [self.present_of[n] for n in self.buffers] + ["logits"] + [self.present_of[n] for n in rebound]

    def cache_bytes(self):
        """Bytes of the cache state a sequence of the current length occupies (the valid rows of
        shared buffers, plus everything rebound), all layers and batch rows."""
        total = 0
        for name, (heads, last, dtype) in self.specs.items():
            if name in self.buffers:
                total += self.batch * heads * self.length * last * np.dtype(dtype).itemsize
            else:
                v = self.past[name]
                total += int(np.prod(v.shape())) * np.dtype(DTYPES[v.data_type()]).itemsize
        return total
