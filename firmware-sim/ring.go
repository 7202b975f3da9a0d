package sim

import meridian "github.com/meridian-iot/meridian/clients/go/meridian"

// batchMeta is a device's bookkeeping for one sent-but-unacked batch in its ring
// (the client package's Ring, which holds the seq and the frame).
type batchMeta struct {
	n int // readings in the batch
	// sentAt is when it was last written (unix ns) and conn the connection
	// generation it was written on: an ack measures latency only against a
	// send on the same connection.
	sentAt int64
	conn   uint32
	sends  int
	ver    *SentBatch // ledger record, nil when not verifying
}

type entry = meridian.Entry[batchMeta]
