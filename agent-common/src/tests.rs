use super::*;
use core::mem::size_of;

#[test]
fn layouts_have_no_implicit_padding() {
    assert_eq!(size_of::<EndpointKey>(), 24);
    assert_eq!(size_of::<MessageCounts>(), 32);
    assert_eq!(size_of::<DirectionStats>(), 4 * 8 + 32 + 16);
    assert_eq!(size_of::<EndpointStats>(), 2 * 80 + 16);
    assert_eq!(size_of::<EndpointEntry>(), 2 * 80 + 16 + 8);
    assert_eq!(size_of::<SessionKey>(), 8);
    assert_eq!(size_of::<SessionState>(), 24 + 4 + 4 + 8 + 8);
    assert_eq!(size_of::<SessionEvent>(), 4 + 4 + 8 + 4 + 4 + 24 + 24 + 8);
    assert_eq!(size_of::<PathKey>(), 16);
    assert_eq!(size_of::<PathState>(), 8 + 16 + 24 + 9 * 8 + 8);
    assert_eq!(size_of::<KernelOffsets>(), 24);
    assert_eq!(size_of::<WgPeerOffsets>(), 12 * 4);
    assert_eq!(size_of::<WgPeerReading>(), 5 * 8 + 4 + 16 + 3 * 4 + 32);
}
