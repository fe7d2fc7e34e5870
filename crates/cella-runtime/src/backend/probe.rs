//! Does hardware KVM work on this host?
//!
//! Probed, never assumed from `/dev/kvm` existing: on hosts with the paravirtual `kvm_pvm` module
//! the device opens and `KVM_CREATE_VM` succeeds, yet ordinary guest kernels die in early boot.
//! KVM counts as usable only when all three hold: the CPU advertises VMX or SVM, `kvm_pvm` is not
//! loaded, and `KVM_CREATE_VM` succeeds.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `KVM_CREATE_VM` ioctl request number (`_IO(KVMIO, 0x01)`).
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;

/// The probe's answer, with the reason when KVM is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmSupport {
    /// Hardware KVM works.
    Usable,
    /// KVM cannot run our guests; the string says why, in words fit for an error message.
    Unusable(String),
}

impl KvmSupport {
    /// Whether KVM works.
    pub fn is_usable(&self) -> bool {
        matches!(self, KvmSupport::Usable)
    }
}

/// Probes this host.
pub fn probe_kvm() -> KvmSupport {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let pvm_loaded = Path::new("/sys/module/kvm_pvm").exists();
    classify(&cpuinfo, pvm_loaded, create_vm)
}

/// Decides from the probe's inputs; `create_vm` is only called when the cheap checks pass.
fn classify(
    cpuinfo: &str,
    pvm_loaded: bool,
    create_vm: impl FnOnce() -> Result<(), String>,
) -> KvmSupport {
    let has_hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if pvm_loaded {
        return KvmSupport::Unusable(
            "KVM is kvm-pvm, a paravirtual module that cannot run this guest kernel".into(),
        );
    }
    if !has_hw_virt {
        return KvmSupport::Unusable("the CPU offers no VMX or SVM hardware virtualization".into());
    }
    match create_vm() {
        Ok(()) => KvmSupport::Usable,
        Err(why) => KvmSupport::Unusable(why),
    }
}

fn create_vm() -> Result<(), String> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    // SAFETY: KVM_CREATE_VM takes an integer machine type (0) and returns a new fd or -1; it
    // reads no memory of ours. `kvm` is a valid open fd for the duration of the call.
    let vm_fd = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm_fd < 0 {
        return Err(format!("KVM_CREATE_VM failed: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `vm_fd` was just returned by the kernel and is owned by nobody else.
    unsafe { libc::close(vm_fd) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor : 0\nflags : fpu vme vmx sse\n";
    const PLAIN: &str = "processor : 0\nflags : fpu vme sse\n";

    #[test]
    fn pvm_module_makes_kvm_unusable_even_when_create_vm_works() {
        let support = classify(VMX, true, || Ok(()));
        assert!(matches!(support, KvmSupport::Unusable(ref why) if why.contains("kvm-pvm")));
    }

    #[test]
    fn missing_cpu_flags_make_kvm_unusable() {
        assert!(!classify(PLAIN, false, || Ok(())).is_usable());
    }

    #[test]
    fn all_checks_passing_means_usable() {
        assert!(classify(VMX, false, || Ok(())).is_usable());
        assert!(!classify(VMX, false, || Err("no".into())).is_usable());
    }

    #[test]
    fn this_host_reports_a_reason_when_unusable() {
        if let KvmSupport::Unusable(why) = probe_kvm() {
            assert!(!why.is_empty());
        }
    }

    /// The project's own machines have kvm-pvm (see shared/ENVIRONMENT.md): there, the probe
    /// must say no, even though /dev/kvm opens and KVM_CREATE_VM succeeds.
    #[test]
    fn a_kvm_pvm_host_is_told_kvm_does_not_work() {
        if !Path::new("/sys/module/kvm_pvm").exists() {
            eprintln!("/sys/module/kvm_pvm is absent: not a kvm-pvm host, nothing to assert");
            return;
        }
        assert_eq!(
            probe_kvm(),
            KvmSupport::Unusable(
                "KVM is kvm-pvm, a paravirtual module that cannot run this guest kernel".into()
            )
        );
    }
}
