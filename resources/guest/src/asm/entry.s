/*
 * Boot-processor entry and the ring-3 entry stubs.
 *
 * The VMM enters _start in 64-bit mode on its own boot page tables, with
 * RSI = &boot_params and a stack in low memory that we leave at once.  Every
 * ring-0 instruction is emulated by KVM (~1 us each), so this path does only
 * what ring 3 cannot: control registers, page tables, GDT/TSS/IDT, then iretq.
 */
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    cld
    /* Rust code uses SSE: CR0.MP=1, CR0.EM=0, CR4.OSFXSR|OSXMMEXCPT. */
    mov     %cr0, %rax
    and     $~(1 << 2), %rax
    or      $(1 << 1), %rax
    mov     %rax, %cr0
    mov     %cr4, %rax
    or      $((1 << 9) | (1 << 10)), %rax
    mov     %rax, %cr4

    /* Our own stack: the kernel stack in CPU 0's per-CPU block. */
    lea     {cpu_blocks}+{CPU_BLOCK_SIZE}(%rip), %rsp

    /* Keep the zero-page address for ring 3 (it stays readable there). */
    lea     {ring0_info}(%rip), %rbx
    mov     %rsi, {INFO_BOOT_PARAMS}(%rbx)

    /* Mask the legacy 8259 PICs: we only use the LAPIC. */
    mov     $0xff, %al
    out     %al, $0x21
    out     %al, $0xa1

    call    probe_cpuid
    call    build_page_tables

    /* CPU 0 enters ring 3 at ring3_bsp_entry on the first user stack. */
    lea     {cpu_blocks}(%rip), %rdi
    movq    $0, {CPU_INDEX}(%rdi)
    lea     ring3_bsp_entry(%rip), %rax
    mov     %rax, {CPU_USER_ENTRY}(%rdi)
    lea     {user_stacks}+{USER_STACK_SIZE}(%rip), %rax
    mov     %rax, {CPU_USER_STACK}(%rdi)
    jmp     cpu_enter_ring3

/*
 * CPUID facts ring 3 needs, read here because CPUID from guest ring 3 may not
 * be virtualised: hypervisor leaf range, TSC/LAPIC-bus kHz (leaf 0x40000010),
 * and 1 GiB page support.
 */
probe_cpuid:
    push    %rbx
    lea     {ring0_info}(%rip), %rsi
    mov     $0x80000000, %eax
    cpuid
    cmp     $0x80000001, %eax
    jb      1f
    mov     $0x80000001, %eax
    cpuid
    bt      $26, %edx                   /* pdpe1gb */
    jnc     1f
    movl    $1, {INFO_HAS_1G}(%rsi)
1:  mov     $0x40000000, %eax
    xor     %ecx, %ecx
    cpuid
    mov     %eax, {INFO_HV_MAX_LEAF}(%rsi)
    /* Without a hypervisor leaf CPUID returns other data: accept 0x4000_0010..0x4fff_ffff only. */
    cmp     $0x40000010, %eax
    jb      2f
    cmp     $0x50000000, %eax
    jae     2f
    mov     $0x40000010, %eax
    xor     %ecx, %ecx
    cpuid
    mov     %eax, {INFO_TSC_KHZ}(%rsi)
    mov     %ebx, {INFO_BUS_KHZ}(%rsi)
2:  pop     %rbx
    ret

/* Ring-3 entry of CPU 0: zero .bss (nothing in it is live yet), then Rust. */
    .text
ring3_bsp_entry:
    lea     __bss_start(%rip), %rdi
    lea     __bss_end(%rip), %rcx
    sub     %rdi, %rcx
    xor     %eax, %eax
    rep stosb
    call    {bsp_main}
    ud2

/* Ring-3 entry of an AP: RDI = CPU index (set by cpu_enter_ring3). */
    .globl ring3_ap_entry
ring3_ap_entry:
    call    {ap_main}
    ud2
