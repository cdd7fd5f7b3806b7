//! Guest bring-up: pseudo file systems, kernel modules, scratch disk, network, power-off.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::console::log;
use super::scratch::{find_disk, SCRATCH};

/// File listing module paths in load order (written by the host into the initramfs).
const MODULE_LIST: &str = "/etc/kiln/modules";

pub fn early_mounts() -> io::Result<()> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", nodev, None),
        ("sysfs", "/sys", nodev, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("devpts", "/dev/pts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("gid=5,mode=620,ptmxmode=666")),
        ("tmpfs", "/dev/shm", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("tmpfs", "/tmp", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777")),
        ("tmpfs", "/run", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755")),
    ];
    for (fstype, target, flags, data) in mounts {
        fs::create_dir_all(target)?;
        mount(Some(fstype), target, Some(fstype), flags, data)
            .map_err(|e| io::Error::other(format!("mount {fstype} on {target}: {e}")))?;
    }
    let _ = nix::unistd::sethostname("kiln");
    Ok(())
}

/// Loads the modules the host listed, in its order (dependencies first).
pub fn load_modules() -> io::Result<()> {
    let list = match fs::read_to_string(MODULE_LIST) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let file = fs::File::open(path).map_err(|e| io::Error::other(format!("{path}: {e}")))?;
        let params = CString::default();
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(io::Error::other(format!("finit_module {path}: {e}"))),
        }
    }
    Ok(())
}

/// Mounts the scratch disk when the host attached one. Without `noinit_itable`
/// the kernel would zero every inode table of the sparse template in the
/// background, turning a few MB on the host into gigabytes.
pub fn mount_scratch() {
    let _ = fs::create_dir_all(SCRATCH);
    // Found by its serial, waiting for it a while: PCI disks are there at
    // once, s390x's channel subsystem probes its devices in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let device = loop {
        match find_disk(Path::new("/sys/block"), kiln_protocol::SCRATCH_DISK_SERIAL) {
            Ok(device) => break device,
            Err(e) if std::time::Instant::now() > deadline => {
                log(format_args!("cannot find the scratch disk: {e}"));
                return;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    if let Err(e) = mount(
        Some(&device),
        SCRATCH,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        Some("noinit_itable,errors=remount-ro"),
    ) {
        log(format_args!("cannot mount the scratch disk {}: {e}", device.display()));
    }
}

/// Brings up loopback, and eth0 for QEMU user networking when present:
/// 10.0.2.15/24, default route via 10.0.2.2, DNS at 10.0.2.3.
pub fn network() {
    if let Err(e) = configure_interface("lo", [127, 0, 0, 1], [255, 0, 0, 0]) {
        log(format_args!("loopback: {e}"));
    }
    if !Path::new("/sys/class/net/eth0").exists() {
        return;
    }
    let result = configure_interface("eth0", [10, 0, 2, 15], [255, 255, 255, 0])
        .and_then(|()| add_default_route([10, 0, 2, 2]))
        .and_then(|()| {
            fs::create_dir_all("/etc")?;
            fs::write("/etc/resolv.conf", "nameserver 10.0.2.3\n")?;
            fs::write("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")
        });
    if let Err(e) = result {
        log(format_args!("eth0: {e}"));
    }
}

fn inet_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

// The SIOC* constants are c_ulong while ioctl's request type differs between libcs.
#[allow(clippy::unnecessary_cast)]
fn ioctl(sock: &std::os::fd::OwnedFd, request: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> io::Result<()> {
    // SAFETY: arg points at a live, correctly typed struct for this request.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as libc::Ioctl, arg) } < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::other(format!("{what}: {err}")));
    }
    Ok(())
}

fn configure_interface(name: &str, addr: [u8; 4], mask: [u8; 4]) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req as *mut _ as *mut _, "SIOCSIFADDR")?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req as *mut _ as *mut _, "SIOCSIFNETMASK")?;
    let mut req = ifreq(name);
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req as *mut _ as *mut _, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req as *mut _ as *mut _, "SIOCSIFFLAGS")
}

fn add_default_route(gateway: [u8; 4]) -> io::Result<()> {
    let sock = inet_socket()?;
    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in([0, 0, 0, 0]);
    route.rt_genmask = sockaddr_in([0, 0, 0, 0]);
    route.rt_gateway = sockaddr_in(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    ioctl(&sock, libc::SIOCADDRT, &mut route as *mut _ as *mut _, "SIOCADDRT")
}

/// Sets the guest's clock to the host's (nanoseconds since the epoch; 0
/// leaves it). A VM restored from a boot snapshot wakes with the snapshot's time.
pub fn set_clock(unix_nanos: u64) {
    if unix_nanos == 0 {
        return;
    }
    // time_t and c_long are 32 bits on armv7.
    let ts = nix::sys::time::TimeSpec::new((unix_nanos / 1_000_000_000) as _, (unix_nanos % 1_000_000_000) as _);
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        log(format_args!("setting the clock: {e}"));
    }
}

/// Mixes the host's random bytes into the kernel's pool, credited, and
/// reseeds the CRNG at once, so VMs restored from one snapshot diverge.
pub fn add_entropy(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let result = fs::OpenOptions::new().write(true).open("/dev/urandom").and_then(|f| {
        // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
        let mut info = Vec::with_capacity(8 + bytes.len());
        info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
        info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
        info.extend_from_slice(bytes);
        // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size it declares,
        // and RNDRESEEDCRNG takes no argument; both act on an open /dev/urandom.
        unsafe {
            if libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) < 0
                || libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        log(format_args!("adding the host's entropy: {e}"));
    }
}

// _IOW('R', 0x03, int[2]) and _IO('R', 0x07), as in <linux/random.h>.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Syncs and powers the VM off. PSCI on arm64 and ACPI on x86 make QEMU
/// exit; the host also passes -no-reboot so a reboot ends it too.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot(2) only returns on error; nothing sensible is left to do.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
