//! Response bodies: a whole one for the JSON routes, a streamed one for `/metrics`
//! (chunks handed over a bounded channel by the thread that writes them). A stream
//! that ends without its end mark (the writer panicked) ends the body with an error,
//! so that hyper cuts the connection rather than send a truncated exposition as if it
//! were whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Chunks waiting for the client at most: the writer is at most this far ahead.
pub const STREAM_DEPTH: usize = 4;

/// A response's body.
pub type ReplyBody = Either<Full<Bytes>, StreamedBody>;

/// What the writer hands over.
#[derive(Debug)]
enum Piece {
    Data(Bytes),
    End,
}

/// The writing side of a [`StreamedBody`].
#[derive(Debug)]
pub struct StreamSender {
    pieces: mpsc::Sender<Piece>,
}

/// The client is gone: nothing more will be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed;

impl StreamSender {
    /// Hands over a chunk, waiting while [`STREAM_DEPTH`] chunks wait unread (call
    /// it off the async workers).
    pub fn send_blocking(&self, chunk: Bytes) -> Result<(), Closed> {
        self.pieces
            .blocking_send(Piece::Data(chunk))
            .map_err(|_| Closed)
    }

    /// The body is complete.
    pub fn finish_blocking(self) -> Result<(), Closed> {
        self.pieces.blocking_send(Piece::End).map_err(|_| Closed)
    }
}

/// A body streamed from a [`StreamSender`].
#[derive(Debug)]
pub struct StreamedBody {
    pieces: mpsc::Receiver<Piece>,
    ended: bool,
}

/// A streamed body and its writing side.
pub fn streamed() -> (StreamSender, StreamedBody) {
    let (pieces, received) = mpsc::channel(STREAM_DEPTH);
    (
        StreamSender { pieces },
        StreamedBody {
            pieces: received,
            ended: false,
        },
    )
}

/// The writer stopped before the end of the body.
#[derive(Debug, thiserror::Error)]
#[error("the response body was cut short: its writer stopped before the end")]
pub struct CutShort;

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = CutShort;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CutShort>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.pieces.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Data(chunk))) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Poll::Ready(Some(Piece::End)) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(CutShort)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A whole body.
pub fn whole(bytes: impl Into<Bytes>) -> ReplyBody {
    Either::Left(Full::new(bytes.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn chunks_arrive_in_order_and_the_end_mark_ends_the_body() {
        let (sender, body) = streamed();
        let writer = std::thread::spawn(move || {
            for chunk in ["a", "b", "c", "d", "e", "f"] {
                sender.send_blocking(Bytes::from(chunk)).unwrap();
            }
            sender.finish_blocking().unwrap();
        });
        let collected = body.collect().await.unwrap().to_bytes();
        writer.join().unwrap();
        assert_eq!(collected, "abcdef");
    }

    #[tokio::test]
    async fn a_writer_that_stops_without_the_end_mark_is_an_error_not_a_short_body() {
        let (sender, body) = streamed();
        let writer = std::thread::spawn(move || {
            sender.send_blocking(Bytes::from("half")).unwrap();
            drop(sender);
        });
        assert!(body.collect().await.is_err());
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn the_writer_learns_that_the_client_is_gone() {
        let (sender, body) = streamed();
        drop(body);
        let writer = std::thread::spawn(move || sender.send_blocking(Bytes::from("x")));
        assert_eq!(writer.join().unwrap(), Err(Closed));
    }
}
