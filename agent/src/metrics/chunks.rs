//! The exposition written in chunks: each is handed on (to the HTTP body) once it
//! holds [`CHUNK_BYTES`], so a scrape never holds its whole text (16 MB at 10k peers)
//! and the client reads one chunk while the next is written.

/// Bytes a chunk holds before it is handed on: small enough to stay in the
/// allocator's caches (no fresh pages per scrape), large enough that a chunk costs
/// one write.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The reader of the chunks went away (the client disconnected): stop writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// Where full chunks go; an error stops the writer.
pub type Deliver<'a> = Box<dyn FnMut(String) -> Result<(), Gone> + Send + 'a>;

/// Text written in chunks.
pub struct ChunkWriter<'a> {
    buf: String,
    size: usize,
    deliver: Deliver<'a>,
}

impl std::fmt::Debug for ChunkWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("buffered", &self.buf.len())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'a> ChunkWriter<'a> {
    /// Chunks of about `size` bytes, each given to `deliver`.
    pub fn new(size: usize, deliver: Deliver<'a>) -> Self {
        Self {
            buf: Self::fresh(size),
            size,
            deliver,
        }
    }

    /// Room for a chunk and the line that fills it.
    fn fresh(size: usize) -> String {
        String::with_capacity(size + 4096)
    }

    /// The current chunk, to append to.
    pub fn text(&mut self) -> &mut String {
        &mut self.buf
    }

    /// A line (or a few) is complete: hands the chunk on if it is full.
    pub fn line_done(&mut self) -> Result<(), Gone> {
        if self.buf.len() >= self.size {
            let full = std::mem::replace(&mut self.buf, Self::fresh(self.size));
            (self.deliver)(full)?;
        }
        Ok(())
    }

    /// Hands on what is left.
    pub fn finish(mut self) -> Result<(), Gone> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.buf);
        (self.deliver)(rest)
    }
}

/// Writes with `write` into chunks of `size` and returns them joined (for tests and
/// for callers that want the whole text).
pub fn collect(
    size: usize,
    write: impl FnOnce(&mut ChunkWriter<'_>) -> Result<(), Gone>,
) -> String {
    let mut chunks = Vec::new();
    {
        let mut writer = ChunkWriter::new(
            size,
            Box::new(|chunk| {
                chunks.push(chunk);
                Ok(())
            }),
        );
        write(&mut writer).expect("collecting never stops");
        writer.finish().expect("collecting never stops");
    }
    chunks.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_chunks_are_handed_on_at_line_ends_and_the_rest_at_the_finish() {
        let mut chunks = Vec::new();
        let mut writer = ChunkWriter::new(
            10,
            Box::new(|chunk| {
                chunks.push(chunk);
                Ok(())
            }),
        );
        for line in ["aaaa\n", "bbbb\n", "cccc\n", "d\n"] {
            writer.text().push_str(line);
            writer.line_done().unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(chunks, ["aaaa\nbbbb\n", "cccc\nd\n"]);
    }

    #[test]
    fn a_reader_that_went_away_stops_the_writer() {
        let mut delivered = 0;
        let mut writer = ChunkWriter::new(
            4,
            Box::new(|_| {
                delivered += 1;
                Err(Gone)
            }),
        );
        writer.text().push_str("line\n");
        assert_eq!(writer.line_done(), Err(Gone));
        drop(writer);
        assert_eq!(delivered, 1);
    }
}
