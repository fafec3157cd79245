"""Messages on the wire (emfl.nn.wire): the bytes are the ones the engine counts, and the receiver
rebuilds the message from them and what it knows itself."""

import struct

import pytest
import torch
from torch import nn

from emfl.nn import wire
from emfl.nn.groups import GroupMap
from emfl.nn.messages import Bits, Bundle, Count, Dense, GroupSparse, Masked, Message, PerGroup, SubModel


def tiny_group_map(prune_output=False):
    """fc 3 -> 4 -> 2: 3 * 4 + 4 + 4 * 2 + 2 = 26 values; four groups in the first layer."""
    return GroupMap(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), prune_output=prune_output)


def test_dense_is_little_endian_float32():
    form, payload = wire.encode(Dense(torch.tensor([1.0, -2.0, 0.5])))
    assert payload == struct.pack("<3f", 1.0, -2.0, 0.5)  # 12 bytes, by hand
    back = wire.decode(form, payload)
    assert isinstance(back, Dense) and back.values.tolist() == [1.0, -2.0, 0.5]
    with pytest.raises(wire.WireError, match="expected 3 float32"):
        wire.decode(form, payload[:8])


def test_a_float64_run_sends_float64_and_counts_its_bytes():
    msg = Dense(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    form, payload = wire.encode(msg)
    assert msg.nbytes == 24 and payload == struct.pack("<3d", 1.0, -2.0, 0.5) and form["f8"] is True
    back = wire.decode(form, payload)
    assert back.values.dtype == torch.float64 and back.values.tolist() == [1.0, -2.0, 0.5]
    third = 1 / 3  # a value float32 cannot hold: it comes back to the last bit
    group_map = tiny_group_map()
    w = torch.full((group_map.d,), third, dtype=torch.float64)
    sparse = GroupSparse(w, torch.tensor([1.0, 0.0, 1.0, 0.0]), group_map)
    form, payload = wire.encode(sparse)
    back = wire.decode(form, payload, group_map=group_map)
    assert len(payload) == sparse.nbytes and torch.equal(back.values, sparse.values)
    assert float(back.values.max()) == third


def test_group_sparse_mask_then_alive_values():
    group_map = tiny_group_map()
    w = torch.arange(1.0, 27.0)  # 1 .. 26, every value different
    msg = GroupSparse(w, torch.tensor([1.0, 0.0, 1.0, 0.0]), group_map)
    form, payload = wire.encode(msg)
    # one mask byte 1010 0000, then units 0 and 2 (3 weights + bias each), the 2 x 2 output
    # weights reading them and the 2 output biases: 14 floats
    assert payload[0] == 0b10100000 and len(payload) == 1 + 4 * 14 == msg.nbytes
    back = wire.decode(form, payload, group_map)
    assert back.mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert torch.equal(back.values, msg.values)  # zeros where nothing was sent, on both ends
    assert back.nbytes == msg.nbytes
    with pytest.raises(wire.WireError, match="group_map"):
        wire.decode(form, payload)
    with pytest.raises(wire.WireError, match="has 32"):
        wire.decode(form, payload, GroupMap(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))))


def test_submodel_values_only_units_known_to_both():
    group_map = tiny_group_map(prune_output=True)
    units = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    msg = SubModel(torch.arange(1.0, 27.0), units, group_map)
    form, payload = wire.encode(msg)
    assert len(payload) == 4 * 14  # no mask on the wire: the units come from a seed both ends hold
    back = wire.decode(form, payload, group_map, units=units)
    sent = group_map.alive(units) > 0
    assert torch.equal(back.values[sent], msg.values[sent]) and float(back.values[~sent].abs().sum()) == 0
    # the server fills what was not sent with its own model, as the client left it
    w = torch.full((26,), 7.0)
    mine = wire.decode(form, payload, group_map, units=units, base=w)
    assert torch.equal(mine.values[sent], msg.values[sent]) and bool((mine.values[~sent] == 7.0).all())
    with pytest.raises(wire.WireError, match="kept units"):
        wire.decode(form, payload, group_map)


def test_bundle_of_model_thresholds_and_count():
    group_map = tiny_group_map()
    keep = torch.tensor([0.0, 1.0, 1.0, 1.0])
    v = torch.tensor([0.1, 0.2, 0.3, 0.4])
    msg = Bundle(w=GroupSparse(torch.ones(26), keep, group_map), v=PerGroup(v, keep), n=Count(500))
    form, payload = wire.encode(msg)
    # mask byte + 3 units x 4 values + 3 x 2 output weights + 2 biases = 20 floats; 3 thresholds; 4-byte count
    assert len(payload) == 1 + 4 * 20 + 4 * 3 + 4 == msg.nbytes
    back = wire.decode(form, payload, group_map)
    assert back["n"].value == 500
    assert back["v"].values.tolist() == pytest.approx([0.0, 0.2, 0.3, 0.4])  # unit 0 was not sent
    assert torch.equal(back["v"].mask, keep)
    assert torch.equal(back["w"].values, msg["w"].values)


def test_masked_values_travel_without_their_mask_and_bits_pack_eight_a_byte():
    mask = torch.tensor([True, False, True, True, False])
    msg = Masked(torch.tensor([1.0, 9.0, -2.0, 0.5, 7.0]), mask)
    form, payload = wire.encode(msg)
    assert payload == struct.pack("<3f", 1.0, -2.0, 0.5) == payload[:msg.nbytes]  # 12 bytes, the mask stays home
    back = wire.decode(form, payload, mask=mask)
    assert back.values.tolist() == [1.0, 0.0, -2.0, 0.5, 0.0] and torch.equal(back.mask, mask)
    with pytest.raises(wire.WireError, match="needs the mask"):
        wire.decode(form, payload)
    with pytest.raises(wire.WireError, match="receiver's mask has 4"):
        wire.decode(form, payload, mask=mask[:4])
    # nine bits: 1011 0000 | 1000 0000, two bytes, by hand
    bits = Bits(torch.tensor([True, False, True, True, False, False, False, False, True]))
    form, payload = wire.encode(bits)
    assert payload == bytes([0b10110000, 0b10000000]) and bits.nbytes == 2
    assert wire.decode(form, payload).bits.tolist() == bits.bits.tolist()
    with pytest.raises(wire.WireError, match="9 bits take 2 bytes"):
        wire.decode(form, payload[:1])
    # a reply with a new mask: the values at the old one, then the new one's bits
    up = Bundle(w=msg, mask=Bits(torch.tensor([False, True, True, True, False])))
    form, payload = wire.encode(up)
    assert len(payload) == 12 + 1 == up.nbytes
    back = wire.decode(form, payload, mask=mask)
    assert back["w"].values.tolist() == [1.0, 0.0, -2.0, 0.5, 0.0]
    assert back["mask"].bits.tolist() == [False, True, True, True, False]


def test_what_has_no_wire_form_says_so():
    class Note(Message):  # a message type without a wire form
        nbytes = 3

    with pytest.raises(wire.WireError, match="Note messages have no wire form"):
        wire.encode(Note())
    with pytest.raises(wire.WireError, match="only in a Bundle"):
        wire.encode(PerGroup(torch.ones(4), torch.ones(4)))
    with pytest.raises(wire.WireError, match="unknown message kind"):
        wire.decode({"kind": "nope"}, b"")
    with pytest.raises(wire.WireError, match="only messages travel"):
        wire.encode(torch.ones(3))
