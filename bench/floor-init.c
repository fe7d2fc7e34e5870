/* The floor's /init: report the guest uptime on the console, then power off at once.
 * Built static by bench/boot.sh and appended to a copy of cella's initramfs as a second
 * cpio archive (the kernel unpacks concatenated archives in order; the later /init wins). */
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(void) {
    char buf[64];
    ssize_t n = -1;
    int fd;
    mount("proc", "/proc", "proc", 0, 0);
    mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
    fd = open("/proc/uptime", O_RDONLY);
    if (fd >= 0) n = read(fd, buf, sizeof buf - 1);
    fd = open("/dev/console", O_WRONLY);
    if (fd >= 0 && n > 0) {
        write(fd, "floor-init uptime ", 18);
        write(fd, buf, n);
    }
    sync();
    reboot(RB_POWER_OFF);
    return 1;
}
