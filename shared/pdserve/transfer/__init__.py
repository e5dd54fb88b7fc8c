"""The KV transfer plane: KV-cache tensors between prefill and decode workers over UCX (ucxx).

The decode worker's KvReceiver hands out tickets (leases on receive buffers); a prefill
worker's KvSender pushes a request's layers against a ticket. See docs/transfer.md for the
wire format, the UCX configuration and measured bandwidth.
"""

from pdserve.errors import KvTransferError
from pdserve.transfer.receiver import KvReceiver
from pdserve.transfer.sender import KvSender, PushRefused
from pdserve.transfer.stats import ReceiverStats, SenderStats
from pdserve.transfer.tickets import Ticket, TicketError

__all__ = [
    "KvReceiver",
    "KvSender",
    "KvTransferError",
    "PushRefused",
    "ReceiverStats",
    "SenderStats",
    "Ticket",
    "TicketError",
]
